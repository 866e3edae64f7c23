"""Figure: misalignment at the end of training against the kernel size.

A reviewers' question: does a larger kernel raise the misalignment M(Σx, Σw)? M is
a sum of one non-negative term per input dimension, and a k×k kernel over C_in
channels has d = C_in·k·k of them, so raw M grows with k even at a fixed quality of
alignment. For each label kind (random, real; and augmentation setting if several)
two rows: M / d (the mean term per dimension), then raw M. Columns: init scales.
x = kernel size (categorical), small points = single seeds, large markers joined by a
line = mean over seeds; colour = basis (the data eigenvectors against the
random-basis control, which should stay high). Rows whose ``pooled`` column is true
(the q_kernel_size target's table: Σw of all filters of a configuration pooled over
its seeds, ``of`` = weights, and of their change from initialization, ``of`` = change)
are drawn as a star and a diamond per kernel size and basis: with 64 filters in up to
147 dimensions a single seed's Σw is barely estimated, and the pooled scores are the
sharper ones. Only each run's final snapshot is used (the largest epoch of its
experiment) and only one layer (when the table has a ``layer`` column); undefined
values (Σw singular, dim missing) are counted and written under their kernel size
rather than dropped silently.
"""

from __future__ import annotations

import os

import matplotlib.lines as mlines
import matplotlib.pyplot as plt
import matplotlib.transforms as mtransforms
import numpy as np
import pandas as pd
import seaborn as sns

from randlabels.analysis.statsfile import OF_CHANGE, OF_WEIGHTS
from randlabels.plots import style

COLUMNS = ["experiment", "kernel_size", "labels", "init_scale", "seed", "epoch", "basis",
           "misalignment", "dim"]
RUN = ["experiment", "kernel_size", "labels", "init_scale", "seed", "basis"]
_CB = sns.color_palette("colorblind", 10)
BASIS_COLORS = {"data": _CB[0], "random": (0.45, 0.45, 0.45)}
METRICS = (("per_dim", "misalignment per dimension\nM / (C_in·k·k)"),
           ("misalignment", "misalignment M(Σx, Σw)"))
#: The pooled rows' markers and legend names, by what was pooled (``of``).
POOLED_MARKERS = {OF_WEIGHTS: "*", OF_CHANGE: "D"}
POOLED_NAMES = {OF_WEIGHTS: "Σw pooled over the seeds", OF_CHANGE: "Σ(W − W₀) pooled: what training changed"}
POOLED_GID = "pooled"  # gid prefix of the pooled markers: "pooled weights", "pooled change"


def _numeric(table: pd.DataFrame) -> pd.DataFrame:
    data = table.copy()
    for column in ("epoch", "misalignment", "dim", "init_scale"):
        data[column] = pd.to_numeric(data[column], errors="coerce")
    return data


def final_epoch(table: pd.DataFrame) -> pd.DataFrame:
    """Rows at the largest epoch of their experiment, with ``per_dim`` = M / dim added.

    Non-finite M or a dim that is missing or not positive gives ``per_dim`` NaN.
    """
    style.require_columns(table, COLUMNS, "kernel-size figure")
    data = _numeric(table)
    last = data.groupby("experiment")["epoch"].transform("max")
    data = data[data["epoch"] == last].copy()
    dim = data["dim"].where(data["dim"] > 0)
    data["per_dim"] = data["misalignment"].where(np.isfinite(data["misalignment"])) / dim
    return data.reset_index(drop=True)


def split_pooled(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-seed rows, pooled rows) by the ``pooled`` column (true, also as text after a
    TSV round trip); without the column every row is per seed. Pooled rows without an
    ``of`` are of the weights."""
    if "pooled" not in table.columns:
        return table, table.iloc[:0]
    flag = table["pooled"].astype(str).str.lower().eq("true")
    pooled = table[flag].copy()
    pooled["of"] = pooled["of"].fillna(OF_WEIGHTS) if "of" in pooled.columns else OF_WEIGHTS
    return table[~flag], pooled


def _kernel_order(values) -> list:
    """Kernel sizes sorted numerically where possible ("3", 5, "7x7" all work)."""
    def key(v):
        text = str(v).lower().split("x")[0].strip()
        try:
            return (0, float(text), str(v))
        except ValueError:
            return (1, 0.0, str(v))
    return sorted(set(values), key=key)


def _missing_runs(table: pd.DataFrame, final: pd.DataFrame) -> int:
    """Runs that have rows but none at their experiment's final epoch."""
    runs = table[RUN].astype(str).drop_duplicates()
    kept = final[RUN].astype(str).drop_duplicates()
    return len(runs.merge(kept, how="left", indicator=True).query("_merge == 'left_only'"))


def _y_scale(values: pd.Series) -> str:
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.empty or positive.max() / positive.min() <= 100:
        return "linear"
    return "symlog" if (values[np.isfinite(values)] <= 0).any() else "log"


def select_layer(table: pd.DataFrame, layer: str | None = None) -> tuple[pd.DataFrame, str | None]:
    """Keep one layer when the table has an (optional) ``layer`` column.

    The kernel size is that of one layer, and M / dim of different layers must not be
    pooled: ``layer`` picks it; by default the first layer the table lists. Returns the
    rows and the layer's name (None when the table has no ``layer`` column).
    """
    if "layer" not in table.columns:
        if layer is not None:
            raise ValueError("kernel-size figure: `layer` given but the table has no layer column")
        return table, None
    names = list(dict.fromkeys(table["layer"].astype(str)))
    chosen = names[0] if layer is None else str(layer)
    if chosen not in names:
        raise ValueError(f"kernel-size figure: layer {chosen!r} not in the table (have {names})")
    return table[table["layer"].astype(str) == chosen], chosen


def plot(table: pd.DataFrame, out_path: str | os.PathLike, title: str | None = None,
         layer: str | None = None) -> None:
    """Draw final misalignment against kernel size and write the PNG to ``out_path``.

    ``title`` replaces the default title. If the table has a ``layer`` column, only
    ``layer`` is drawn (default: the first listed); if it has an ``augment`` column
    with several settings, each setting gets its own rows.
    """
    style.require_columns(table, COLUMNS, "kernel-size figure")
    style.apply_theme()
    table, layer = select_layer(table, layer)
    table, pooled = split_pooled(table)
    several_augment = "augment" in table.columns and table["augment"].astype(str).nunique() > 1

    def prepared(frame: pd.DataFrame) -> pd.DataFrame:
        frame = final_epoch(frame)
        frame["kernel_size"] = frame["kernel_size"].astype(str)
        frame["basis"] = frame["basis"].astype(str)
        frame["labels"] = frame["labels"].astype(str) + " labels"
        if several_augment:
            frame["labels"] = frame["labels"] + ", augment " + frame["augment"].astype(str)
        return frame

    data = prepared(table)
    pooled = prepared(pooled) if not pooled.empty else data.iloc[:0].assign(of=pd.Series(dtype=str))
    kernels = _kernel_order(data["kernel_size"])
    bases = [b for b in style.BASIS_NAMES if b in set(data["basis"])]
    bases += sorted(set(data["basis"]) - set(bases))
    colours = {b: BASIS_COLORS.get(b, style.variant_color(b)) for b in bases}
    markers = {b: style.BASIS_MARKERS.get(b, "s") for b in bases}
    label_order = [lab for lab in ("random labels", "real labels") if lab in set(data["labels"])]
    label_order += sorted(set(data["labels"]) - set(label_order))
    scales = sorted(data["init_scale"].dropna().unique())
    if not scales:
        raise ValueError("kernel-size figure: no row has a numeric init_scale")
    width = 0.6
    offsets = {b: (i - (len(bases) - 1) / 2) * width / max(len(bases), 1)
               for i, b in enumerate(bases)}
    rng = np.random.default_rng(0)  # fixed jitter so re-rendering gives the same image

    # Rows: for each label kind, M / dim then raw M; columns: init scales.
    rows = [(labels, metric, ylabel) for labels in label_order for metric, ylabel in METRICS]
    fig, axes = plt.subplots(len(rows), len(scales), squeeze=False, sharex=True,
                             figsize=(max(3.0, 0.6 * len(kernels) + 1.6) * len(scales) + 2.4,
                                      2.5 * len(rows) + 0.8))
    any_undefined = False
    for r, (labels, metric, ylabel) in enumerate(rows):
        for c, init_scale in enumerate(scales):
            ax = axes[r, c]
            facet = data[(data["labels"] == labels) & (data["init_scale"] == init_scale)]
            pooled_facet = pooled[(pooled["labels"] == labels) & (pooled["init_scale"] == init_scale)]
            note_transform = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
            for b in bases:
                means_x, means_y = [], []
                for i, kernel in enumerate(kernels):
                    cell = facet[(facet["basis"] == b) & (facet["kernel_size"] == kernel)]
                    if cell.empty:
                        continue
                    x = i + offsets[b]
                    values = cell[metric].to_numpy(dtype=float)
                    ok = np.isfinite(values)
                    jitter = rng.uniform(-0.05, 0.05, ok.sum())
                    ax.scatter(x + jitter, values[ok], s=16, color=colours[b], alpha=0.5,
                               linewidths=0, marker=markers[b], zorder=2)
                    if ok.any():
                        means_x.append(x)
                        means_y.append(float(values[ok].mean()))
                    n_bad = int((~ok).sum())
                    if n_bad:
                        any_undefined = True
                        ax.annotate(f"{n_bad}/{len(values)}\nundef.", xy=(x, 0.02),
                                    xycoords=note_transform, ha="center", va="bottom",
                                    fontsize="xx-small", color=colours[b])
                    for of, marker in POOLED_MARKERS.items():
                        one = pooled_facet[(pooled_facet["basis"] == b) & (pooled_facet["kernel_size"] == kernel)
                                           & (pooled_facet["of"] == of)][metric].to_numpy(dtype=float)
                        one = one[np.isfinite(one)]
                        if one.size:
                            ax.scatter(np.full(one.size, x), one, s=110 if of == OF_WEIGHTS else 45,
                                       marker=marker, color=colours[b], edgecolors="black", linewidths=0.6,
                                       zorder=4, gid=f"{POOLED_GID} {of}")
                if means_x:
                    ax.plot(means_x, means_y, color=colours[b], marker=markers[b],
                            markersize=7, markeredgecolor="white", linewidth=1.4, zorder=3)
            if metric == METRICS[0][0]:
                ax.set_title(f"{labels}, {style.format_scale(init_scale)}")
            if r == len(rows) - 1:
                ax.set_xlabel("kernel size k")
            if c == 0:
                ax.set_ylabel(f"{labels}:\n{ylabel}")
            if facet.empty or facet[metric].notna().sum() == 0:
                ax.text(0.5, 0.5, "no runs" if facet.empty else "all values undefined",
                        transform=ax.transAxes, ha="center", va="center", color="0.4")
    # One y range (and scale) per metric across every row and column, so that panels of
    # random and real labels compare directly; labels only on the first column.
    for metric, _ in METRICS:
        group = [axes[r, c] for r, row in enumerate(rows) if row[1] == metric
                 for c in range(len(scales))]
        every = pd.concat([data[metric], pooled[metric]], ignore_index=True)
        scale = _y_scale(every)
        for ax in group:
            if scale != "linear":
                ax.set_yscale(scale)
        values = every[np.isfinite(every)]
        if scale == "linear":
            high = float(values.max()) if not values.empty else 1.0
            low = min(float(values.min()) if not values.empty else 0.0, 0.0)
            high = high if high > low else low + 1.0
            low, high = low - 0.12 * (high - low), high + 0.06 * (high - low)  # room for counts
        else:
            positive = values[values > 0]
            low, high = float(positive.min()) / 3.0, float(positive.max()) * 1.5
        for ax in group:
            ax.set_ylim(low, high)
    for r in range(len(rows)):
        for c in range(1, len(scales)):
            axes[r, c].tick_params(labelleft=False)
    for ax in axes.flat:
        ax.set_xticks(range(len(kernels)), kernels)
        ax.set_xlim(-0.6, len(kernels) - 0.4)
        ax.grid(False, axis="x")

    handles = [mlines.Line2D([], [], color=colours[b], marker=markers[b], linewidth=1.4,
                             label=style.BASIS_NAMES.get(b, b)) for b in bases]
    drawn_of = [of for of in POOLED_MARKERS if of in set(pooled["of"])]
    if drawn_of:
        handles.append(mlines.Line2D([], [], linestyle="", label=""))
        handles += [mlines.Line2D([], [], color="0.5", marker=POOLED_MARKERS[of], linestyle="",
                                  markersize=11 if of == OF_WEIGHTS else 7, markeredgecolor="black",
                                  label=POOLED_NAMES[of]) for of in drawn_of]
    fig.legend(handles=handles, title="basis", loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)
    if title is None:
        epochs = table.assign(epoch=pd.to_numeric(table["epoch"], errors="coerce")).groupby(
            "experiment")["epoch"].max().dropna().unique()
        when = f"epoch {epochs[0]:g}" if len(epochs) == 1 else "final epoch of each experiment"
        where = f", layer {layer}" if layer is not None else ""
        title = f"Does a larger kernel raise the misalignment? (after training, {when}{where})"
    fig.suptitle(title)
    footnote = "small points: single seeds; large markers joined by lines: mean over seeds"
    if drawn_of:
        seeds = pd.to_numeric(pooled.get("seeds", pd.Series(dtype=float)), errors="coerce").dropna()
        n = "" if seeds.empty else (f" {int(seeds.min())}" if seeds.min() == seeds.max()
                                    else f" {int(seeds.min())}–{int(seeds.max())}")
        footnote += (f"\nstar, diamond: the filters of the{n} seeds of a configuration pooled into one Σw, and "
                     "their change from initialization (diverged and collapsed runs left out)")
        undefined = pooled[~np.isfinite(pooled["misalignment"])]
        if not undefined.empty:
            footnote += "\npooled, not drawn: " + style.reason_text(undefined)
    if any_undefined:
        footnote += ("\nk/n undef.: values undefined (Σw singular or dimension missing), "
                     "left out of the mean")
    n_missing = _missing_runs(_numeric(table), final_epoch(table))
    if n_missing:
        footnote += (f"\n{n_missing} run(s) have no snapshot at their experiment's final epoch "
                     "(e.g. diverged or unfinished) and are not shown")
    fig.text(0.01, 0.0, footnote, ha="left", va="top", fontsize="small", color="0.3")
    fig.tight_layout()
    style.save_figure(fig, out_path)
