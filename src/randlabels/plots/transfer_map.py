"""Figure: where transfer is positive or negative (init scale × downstream classes).

Claim 5 of the paper: whether pre-training on random labels helps or hurts depends on
the initialization scale and on the number of downstream classes. One heat-map panel
per variant: x = init scale, y = number of downstream classes. Top row: the speed-up
in steps to the target accuracy (scratch ÷ variant), geometric mean over seeds, on a
log colour scale centred at 1 (blue = faster than scratch, red = slower). Cells where
some seed's speed-up is undefined (the run or its scratch partner never reached the
target, or it diverged) are hatched and say how many; where the table has the runs'
``reached`` column, a seed whose variant never reached the target while its scratch
partner did is named as such ("only scratch reached k/n": negative transfer, the
strongest kind, not a missing value), and the reverse likewise; the rest are "n/r k/n".
An infinite speed-up is counted as "∞ k/n". Bottom row: the gain in area under the learning
curve (variant − scratch), mean over seeds, centred at 0; it is defined even where
the target is never reached, so every cell has a colour. Several (experiment, task)
pairs become separate blocks of rows, named in the panel titles.

The speed-ups are those of the transfer-summary table, each to its own task's target
(``finetune.target_accuracy``). An absolute target below chance (1/C) is reached at
step 0 by every run, and one far above it never on many classes, so the map is
comparable across class counts only with a target relative to chance,
``{from_chance: f}`` (1/C + f·(1 − 1/C)); where the table's ``target`` differs between
class counts, each y tick says its resolved accuracy.
"""

from __future__ import annotations

import os

import matplotlib.colors as mcolors
import matplotlib.patches as mpatches
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd

from randlabels.analysis.summary import describe_target, is_relative, one_side_reached
from randlabels.inits import variants
from randlabels.plots import style

COLUMNS = ["experiment", "task", "classes", "init_scale", "variant", "seed", "speedup",
           "auc_gap"]
CELL = ["experiment", "task", "classes", "init_scale"]
CMAP = "RdBu"  # low (negative transfer) red, high (positive transfer) blue
MISSING_COLOUR = "0.82"


def _numeric(table: pd.DataFrame) -> pd.DataFrame:
    data = table.reset_index(drop=True)
    for column in ("classes", "init_scale", "speedup", "auc_gap"):
        data[column] = pd.to_numeric(data[column], errors="coerce")
    data["experiment"] = data["experiment"].astype(str)
    data["task"] = data["task"].astype(str)
    data["variant"] = data["variant"].astype(str)
    return data


def cell_values(table: pd.DataFrame, variant: str, metric: str = "speedup",
                baseline: str = variants.SCRATCH) -> pd.DataFrame:
    """One row per (experiment, task, classes, init_scale) of ``variant``.

    ``value`` is the geometric mean over seeds of the finite positive speed-ups
    (``metric="speedup"``) or the mean of the finite area gaps (``metric="auc_gap"``);
    NaN when no seed has one. ``n`` counts the seeds that entered it, ``total`` all
    seeds, ``n_nan`` the NaN ones (never reached the target, or diverged), ``n_inf``
    the infinite ones and ``n_other`` non-positive speed-ups (not on a log scale).
    Of the NaN speed-ups, ``n_only_baseline`` counts the seeds where only the
    ``baseline`` run reached the target (the variant did not, and did not diverge) and
    ``n_only_variant`` the reverse; both need the table's ``reached`` column (0 without).
    """
    if metric not in ("speedup", "auc_gap"):
        raise ValueError(f"transfer-map figure: unknown metric {metric!r}")
    style.require_columns(table, COLUMNS, "transfer-map figure")
    data = _numeric(table)
    only_baseline, only_variant = one_side_reached(data, baseline)
    data = data[data["variant"] == str(variant)]
    rows = []
    for key, runs in data.groupby(CELL, sort=True, dropna=False):
        values = runs[metric].to_numpy(dtype=float)
        unset = np.isnan(values) if metric == "speedup" else np.zeros(values.size, dtype=bool)
        finite = np.isfinite(values)
        ok = finite & (values > 0) if metric == "speedup" else finite
        good = values[ok]
        if good.size == 0:
            value = float("nan")
        elif metric == "speedup":
            value = float(np.exp(np.log(good).mean()))
        else:
            value = float(good.mean())
        n_nan = int(np.isnan(values).sum())
        n_inf = int(np.isinf(values).sum())
        rows.append({**dict(zip(CELL, key)), "value": value, "n": int(ok.sum()),
                     "total": int(values.size), "n_nan": n_nan, "n_inf": n_inf,
                     "n_other": int(values.size - ok.sum() - n_nan - n_inf),
                     "n_only_baseline": int((unset & only_baseline[runs.index].to_numpy()).sum()),
                     "n_only_variant": int((unset & only_variant[runs.index].to_numpy()).sum())})
    return pd.DataFrame(rows, columns=[*CELL, "value", "n", "total", "n_nan", "n_inf",
                                       "n_other", "n_only_baseline", "n_only_variant"])


def _format(value: float, metric: str) -> str:
    if not np.isfinite(value):
        return "undefined"
    if metric == "speedup":
        return f"{value:.3g}×"
    return f"{value:+.3f}"


def _notes(cell: pd.Series, baseline: str = variants.SCRATCH) -> list[str]:
    gaps = style.speedup_gaps(cell, baseline, variant=cell.get("variant", "the variant"))
    # "only scratch" / "reached k/n" on two lines, to fit a cell.
    notes = [label.replace(" reached", "\nreached") + f" {count}/{cell['total']}" for label, count in gaps]
    if cell["n_other"]:
        notes.append(f"≤0 {cell['n_other']}/{cell['total']}")
    return notes


def _norm(values: pd.Series, metric: str) -> mcolors.Normalize:
    """Colour scale symmetric about "no transfer": log about 1, linear about 0."""
    finite = values[np.isfinite(values)]
    if metric == "speedup":
        finite = finite[finite > 0]
        span = float(np.abs(np.log(finite)).max()) if not finite.empty else 0.0
        span = max(span, np.log(1.25))
        return mcolors.LogNorm(vmin=float(np.exp(-span)), vmax=float(np.exp(span)))
    span = float(np.abs(finite).max()) if not finite.empty else 0.0
    span = max(span, 0.01)
    return mcolors.Normalize(vmin=-span, vmax=span)


def _ratio_ticks(vmax: float) -> list[float]:
    """Ticks symmetric about 1 on a log scale: 1, and up to three ratios r and 1/r,
    the largest ones that fit, at least a factor 1.2 apart."""
    kept: list[float] = []
    for r in (1e4, 1e3, 100, 50, 20, 10, 5, 3, 2, 1.5, 1.25):
        if r <= vmax * 1.0001 and len(kept) < 3 and (not kept or kept[-1] / r >= 1.2):
            kept.append(r)
    return sorted([1.0] + kept + [1 / r for r in kept])


def class_labels(table: pd.DataFrame, classes: list) -> list[str]:
    """Y tick labels: the class counts, each with its resolved target accuracy (the
    table's ``target``) where the targets differ between class counts."""
    plain = [f"{c:g}" for c in classes]
    if "target" not in table.columns:
        return plain
    data = table.assign(classes=pd.to_numeric(table["classes"], errors="coerce"),
                        target=pd.to_numeric(table["target"], errors="coerce"))
    per_class = data.groupby("classes")["target"].unique()
    if data["target"].nunique() <= 1 or any(len(per_class.get(c, [])) != 1 for c in classes):
        return plain
    return [f"{c:g}\n(target {100 * float(per_class[c][0]):.3g}%)" for c in classes]


def _draw_panel(ax, cells: pd.DataFrame, classes: list, scales: list, metric: str,
                norm: mcolors.Normalize, cmap, labels: list[str] | None = None,
                baseline: str = variants.SCRATCH) -> object:
    grid = np.full((len(classes), len(scales)), np.nan)
    lookup = {(c["classes"], c["init_scale"]): c for _, c in cells.iterrows()}
    for i, n_classes in enumerate(classes):
        for j, scale in enumerate(scales):
            cell = lookup.get((n_classes, scale))
            if cell is not None:
                grid[i, j] = cell["value"]
    mesh = ax.pcolormesh(np.arange(len(scales) + 1) - 0.5, np.arange(len(classes) + 1) - 0.5,
                         np.ma.masked_invalid(grid), cmap=cmap, norm=norm, shading="flat")
    for i, n_classes in enumerate(classes):
        for j, scale in enumerate(scales):
            cell = lookup.get((n_classes, scale))
            if cell is None:
                ax.text(j, i, "no runs", ha="center", va="center", fontsize="x-small",
                        color="0.4")
                continue
            value = cell["value"]
            notes = _notes(cell, baseline)
            if notes:
                ax.add_patch(mpatches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                                hatch="///", edgecolor="0.35", linewidth=0,
                                                zorder=2))
            dark = np.isfinite(value) and abs(float(norm(value)) - 0.5) > 0.3
            one_side = cell.get("n_only_baseline", 0) + cell.get("n_only_variant", 0)
            # Where only one side reached the target, the notes say which: no "undefined".
            shown = [] if not np.isfinite(value) and one_side else [_format(value, metric)]
            text = "\n".join([*shown, *notes])
            ax.text(j, i, text, ha="center", va="center", fontsize="x-small", zorder=3,
                    color="white" if dark else "black",
                    bbox=dict(boxstyle="round,pad=0.15", facecolor="white", alpha=0.6,
                              linewidth=0) if notes and not dark else None)
    ax.set_xticks(range(len(scales)), [f"{s:g}" for s in scales])
    ax.set_yticks(range(len(classes)), labels or [f"{c:g}" for c in classes])
    ax.set_xlim(-0.5, len(scales) - 0.5)
    ax.set_ylim(-0.5, len(classes) - 0.5)
    ax.grid(False)
    return mesh


def plot(table: pd.DataFrame, out_path: str | os.PathLike, variants: list | None = None,
         target: float | dict | None = None, title: str | None = None,
         baseline: str = variants.SCRATCH) -> None:
    """Draw speed-up and area-gap heat maps per variant and write the PNG to ``out_path``.

    ``variants`` chooses the panels (default: every variant present except
    ``baseline``); ``target`` is the downstream train accuracy the speed-up refers to,
    absolute or ``{"from_chance": f}`` (shown in the title when given); ``title``
    replaces the default title.
    """
    style.require_columns(table, COLUMNS, "transfer-map figure")
    style.apply_theme()
    data = _numeric(table)
    present = style.variant_order(v for v in data["variant"].unique() if v != baseline)
    if variants is None:
        variants = present
    else:
        variants = [str(v) for v in variants]
        unknown = [v for v in variants if v not in present]
        if unknown:
            raise ValueError(f"transfer-map figure: variant(s) {unknown} not in the table "
                             f"(non-{baseline} variants present: {present})")
    if not variants:
        raise ValueError(f"transfer-map figure: only the baseline {baseline!r} is present")

    groups = sorted(set(map(tuple, data[["experiment", "task"]].drop_duplicates().to_numpy())))
    classes = sorted(data["classes"].dropna().unique())
    scales = sorted(data["init_scale"].dropna().unique())
    if not classes or not scales:
        raise ValueError("transfer-map figure: no numeric `classes` / `init_scale` values")
    metrics = {m: pd.concat([cell_values(table, v, m, baseline) for v in variants], keys=variants,
                            names=["variant"]).reset_index(level=0)
               for m in ("speedup", "auc_gap")}
    ylabels = class_labels(data, classes)
    cmap = plt.get_cmap(CMAP).with_extremes(bad=MISSING_COLOUR)
    norms = {m: _norm(cells["value"], m) for m, cells in metrics.items()}
    labels = {"speedup": f"speed-up ({baseline} steps ÷ variant steps)\ngeometric mean over seeds",
              "auc_gap": f"gain in area under curve\n(variant − {baseline}), mean over seeds"}

    nrows = 2 * len(groups)
    panel_w = max(2.6, 0.95 * len(scales) + 1.0)
    panel_h = max(2.2, 0.55 * len(classes) + 1.0)
    fig, axes = plt.subplots(nrows, len(variants), squeeze=False, layout="constrained",
                             figsize=(panel_w * len(variants) + 1.8, panel_h * nrows + 1.2))
    for g, group in enumerate(groups):
        for m, metric in enumerate(("speedup", "auc_gap")):
            row = 2 * g + m
            cells = metrics[metric]
            mesh = None
            for c, variant in enumerate(variants):
                ax = axes[row, c]
                sel = cells[(cells["variant"] == variant) & (cells["experiment"] == group[0])
                            & (cells["task"] == group[1])]
                mesh = _draw_panel(ax, sel, classes, scales, metric, norms[metric], cmap, ylabels,
                                   baseline)
                name = {"speedup": "speed-up", "auc_gap": "AUC gain"}[metric]
                prefix = f"{group[0]} / {group[1]}: " if len(groups) > 1 else ""
                ax.set_title(f"{prefix}{variant} — {name}")
                if row == nrows - 1:
                    ax.set_xlabel("init scale")
                if c == 0:
                    ax.set_ylabel("downstream classes")
            bar = fig.colorbar(mesh, ax=list(axes[row]), shrink=0.9, pad=0.02)
            bar.set_label(labels[metric], fontsize="small")
            if metric == "speedup":
                ticks = _ratio_ticks(norms[metric].vmax)
                bar.ax.yaxis.set_major_locator(mticker.FixedLocator(ticks))
                bar.ax.yaxis.set_minor_locator(mticker.NullLocator())
                bar.ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:.3g}×"))

    if title is None:
        if target is None:
            what = "the target downstream train accuracy"
        elif is_relative(target):
            what = f"a downstream train accuracy\n{describe_target(target)}"
        else:
            what = f"{describe_target(target)} downstream train accuracy"
        title = (f"Where transfer is positive (blue) or negative (red): speed-up to {what}\n"
                 f"and gain in area under the learning curve, against {baseline}")
        if len(groups) == 1:
            title += f" ({groups[0][0]}, downstream {groups[0][1]})"
    fig.suptitle(title)
    fig.text(0.01, -0.01,
             "hatched cell: some seeds have no finite speed-up, left out of the mean\n"
             f"only {baseline} reached k/n: the variant never reached the target, its {baseline} "
             "partner did (negative transfer); only the variant reached: the reverse\n"
             f"n/r k/n: neither reached the target, or a run diverged; ∞ k/n: infinite "
             "speed-up; grey cell: no seed defined, or no runs",
             ha="left", va="top", fontsize="small", color="0.3")
    style.save_figure(fig, out_path)
