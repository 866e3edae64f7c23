"""Figure: per-layer activation statistics across the switch from pre-training to
downstream training.

Claim 5 (paper §3): specialization at later layers competes with the alignment of
the first layers. When the downstream task starts, the activations of the later
layers of a network pre-trained on random labels collapse (fewer ReLU units active,
more never active), which can turn the transfer negative; widening the upper layers
mitigates it. Rows: statistic (fraction of units active on a batch, fraction never
active on the downstream data, mean activation). Per init scale, two panels side by
side: upstream pre-training (x = epoch), then downstream training (x = step); the
border between them, marked, is the switch. Colour: layer, from first (dark) to last
(light) in the order the table lists them. Line style: experiment (e.g. narrow vs
widened model). Downstream, the first chosen variant (``pretrained``) is drawn solid
and the second (``scratch``, the reference without pre-training) faded and dotted.
Lines are means over seeds; undefined (NaN) values are counted in the panel titles.
"""

from __future__ import annotations

import os

import matplotlib.lines as mlines
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd

from randlabels.inits import variants
from randlabels.plots import style

COLUMNS = ["experiment", "variant", "init_scale", "seed", "phase", "x", "layer", "statistic",
           "value"]
PHASES = ("upstream", "downstream")
STATISTICS = {
    "frac_active": "fraction of units active\n(on a batch)",
    "frac_dead": "fraction of units never active\n(on the downstream data)",
    "mean_activation": "mean activation",
}
EXPERIMENT_DASHES = ["-", "--", "-.", (0, (1, 1)), (0, (5, 1, 1, 1, 1, 1))]
MAX_LAYER_ENTRIES = 8


def _default_variants(present: list[str]) -> list[str]:
    preferred = [v for v in (variants.PRETRAINED, variants.SCRATCH) if v in present]
    return preferred or style.variant_order(present)[:1]


def _layer_legend(layers: list[str], palette: dict) -> tuple[list, str]:
    """At most :data:`MAX_LAYER_ENTRIES` layer entries, evenly spread, first and last kept."""
    if len(layers) <= MAX_LAYER_ENTRIES:
        shown = layers
        note = "layer"
    else:
        index = np.unique(np.round(np.linspace(0, len(layers) - 1, MAX_LAYER_ENTRIES)).astype(int))
        shown = [layers[i] for i in index]
        note = f"layer ({len(shown)} of {len(layers)} shown;\ncolour runs first → last)"
    handles = [mlines.Line2D([], [], color=palette[layer], linewidth=2, label=str(layer))
               for layer in shown]
    return handles, note


def mean_over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """Mean ``value`` per (experiment, variant, init_scale, phase, layer, statistic, x)
    over seeds; ``n`` counts the finite values that entered it."""
    data = table.copy()
    data["value"] = pd.to_numeric(data["value"], errors="coerce")
    data.loc[~np.isfinite(data["value"]), "value"] = np.nan
    keys = ["experiment", "variant", "init_scale", "phase", "layer", "statistic", "x"]
    return data.groupby(keys, sort=False, dropna=False).agg(
        value=("value", "mean"), n=("value", "count")).reset_index()


def select_task(table: pd.DataFrame, task: str | None = None) -> tuple[pd.DataFrame, str | None]:
    """Keep the downstream rows of one task when the table has an (optional) ``task``
    column with several downstream tasks; upstream rows are kept whatever their task.

    Default: ``"real"`` if present, else the first task listed. Returns the rows and
    the task (None when there is nothing to choose).
    """
    if "task" not in table.columns:
        if task is not None:
            raise ValueError("specialization figure: `task` given but the table has no task column")
        return table, None
    downstream = table["phase"].astype(str).str.strip().str.lower() == "downstream"
    tasks = list(dict.fromkeys(table.loc[downstream, "task"].astype(str)))
    if task is None:
        if len(tasks) <= 1:
            return table, (tasks[0] if tasks else None)
        task = "real" if "real" in tasks else tasks[0]
    task = str(task)
    if task not in tasks:
        raise ValueError(f"specialization figure: task {task!r} has no downstream rows "
                         f"(have {tasks})")
    return table[~downstream | (table["task"].astype(str) == task)], task


def plot(table: pd.DataFrame, out_path: str | os.PathLike, variants: list | None = None,
         title: str | None = None, task: str | None = None) -> None:
    """Draw the activation statistics per layer and write the PNG to ``out_path``.

    ``variants`` (at most two) chooses the downstream variants: the first is drawn
    solid, the second faded and dotted. Default: ``["pretrained", "scratch"]`` where
    present, else the first variant. Upstream rows are averaged whatever their
    variant (pre-training is shared by the variants that start from it). If the table
    has a ``task`` column with several downstream tasks, only ``task`` is drawn
    (default ``"real"`` if present, else the first listed), named in the title.
    """
    style.require_columns(table, COLUMNS, "specialization figure")
    style.apply_theme()
    data, task = select_task(table, task)
    data = data.copy()
    data["phase"] = data["phase"].astype(str).str.strip().str.lower()
    data["x"] = pd.to_numeric(data["x"], errors="coerce")
    data["value"] = pd.to_numeric(data["value"], errors="coerce")
    data["experiment"] = data["experiment"].astype(str)
    data["variant"] = data["variant"].astype(str)
    data["statistic"] = data["statistic"].astype(str)
    odd = sorted(set(data["phase"]) - set(PHASES))
    if odd:
        raise ValueError(f"specialization figure: unknown phase(s) {odd}; expected {list(PHASES)}")
    down = data[data["phase"] == "downstream"]
    present = list(dict.fromkeys(down["variant"]))
    if variants is None:
        variants = _default_variants(present)
    else:
        variants = [str(v) for v in variants]
        if not 1 <= len(variants) <= 2:
            raise ValueError("specialization figure: `variants` takes one or two names "
                             f"(solid, then faded); got {variants}")
        unknown = [v for v in variants if v not in present]
        if unknown:
            raise ValueError(f"specialization figure: variant(s) {unknown} have no downstream "
                             f"rows (present: {present})")
    data = data[(data["phase"] == "upstream") | data["variant"].isin(variants)]
    # Upstream: variant does not matter (shared pre-training), so pool it.
    data.loc[data["phase"] == "upstream", "variant"] = "upstream"

    layers = list(dict.fromkeys(data["layer"]))
    palette = style.sequential_palette(range(len(layers)), "viridis", low=0.0, high=0.88)
    palette = {layer: palette[i] for i, layer in enumerate(layers)}
    experiments = list(dict.fromkeys(data["experiment"]))
    dashes = {e: EXPERIMENT_DASHES[i % len(EXPERIMENT_DASHES)] for i, e in enumerate(experiments)}
    statistics = [s for s in STATISTICS if s in set(data["statistic"])]
    statistics += sorted(set(data["statistic"]) - set(statistics))
    scales = sorted(pd.to_numeric(data["init_scale"], errors="coerce").dropna().unique())
    data["init_scale"] = pd.to_numeric(data["init_scale"], errors="coerce")
    if not scales:
        raise ValueError("specialization figure: no row has a numeric init_scale")
    means = mean_over_seeds(data)
    phases = [p for p in PHASES if p in set(data["phase"])]

    ncols = len(phases) * len(scales)
    fig, axes = plt.subplots(len(statistics), ncols, squeeze=False, sharey="row",
                             figsize=(3.4 * ncols + 2.4, 2.6 * len(statistics) + 1.0))
    for r, statistic in enumerate(statistics):
        for s, init_scale in enumerate(scales):
            for p, phase in enumerate(phases):
                ax = axes[r, s * len(phases) + p]
                facet_raw = data[(data["statistic"] == statistic) & (data["phase"] == phase)
                                 & (data["init_scale"] == init_scale)]
                facet = means[(means["statistic"] == statistic) & (means["phase"] == phase)
                              & (means["init_scale"] == init_scale)]
                lines = [("upstream", 1.0, 1.5)] if phase == "upstream" else \
                    [(v, 1.0 if i == 0 else 0.45, 1.5 if i == 0 else 1.1)
                     for i, v in enumerate(variants)]
                for variant, alpha, width in lines:
                    for experiment in experiments:
                        for layer in layers:
                            line = facet[(facet["variant"] == variant)
                                         & (facet["experiment"] == experiment)
                                         & (facet["layer"] == layer)].sort_values("x")
                            if line.empty:
                                continue
                            dash = dashes[experiment]
                            if variant != "upstream" and variant != variants[0]:
                                dash = (0, (1, 1.5)) if len(experiments) == 1 else dash
                            ax.plot(line["x"], line["value"], color=palette[layer],
                                    linestyle=dash, alpha=alpha, linewidth=width)
                n_bad = int(facet_raw["value"].isna().sum() + np.isinf(facet_raw["value"]).sum())
                if r == 0:
                    head = "upstream pre-training" if phase == "upstream" else \
                        "downstream training"
                    ax.set_title(f"{head}\n{style.format_scale(init_scale)}")
                if n_bad:
                    ax.text(0.98, 0.02, f"{n_bad} undefined value(s) left out",
                            transform=ax.transAxes, ha="right", va="bottom",
                            fontsize="x-small", color="0.35")
                if facet.empty or facet["value"].isna().all():
                    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center",
                            va="center", color="0.4")
                # The switch: right border of upstream, left border of downstream.
                if phase == "upstream" and "downstream" in phases:
                    ax.spines["right"].set_visible(True)
                    ax.spines["right"].set_color("0.15")
                    ax.spines["right"].set_linewidth(2.0)
                    ax.text(1.0, 1.0, "switch ", transform=ax.transAxes, ha="right", va="top",
                            fontsize="x-small", color="0.15")
                if phase == "downstream":
                    ax.set_facecolor((0.96, 0.96, 0.99))
                    if "upstream" in phases:
                        ax.spines["left"].set_visible(True)
                        ax.spines["left"].set_color("0.15")
                        ax.spines["left"].set_linewidth(2.0)
                ax.xaxis.set_major_locator(mticker.MaxNLocator(nbins=5, integer=True))
                if r == len(statistics) - 1:
                    ax.set_xlabel("epoch" if phase == "upstream" else "step")
                if s == 0 and p == 0:
                    ax.set_ylabel(STATISTICS.get(statistic, statistic))
        if statistic.startswith("frac_"):
            axes[r, 0].set_ylim(-0.03, 1.03)

    handles, layer_title = _layer_legend(layers, palette)
    fig.legend(handles=handles, title=layer_title, loc="upper left",
                        bbox_to_anchor=(1.0, 0.95), frameon=False)
    styles = []
    if len(experiments) > 1:
        styles += [mlines.Line2D([], [], color="0.3", linestyle=dashes[e], label=e)
                   for e in experiments]
    if "downstream" in phases:
        styles.append(mlines.Line2D([], [], color="0.3", linewidth=1.5,
                                    label=f"{variants[0]} (downstream, full colour)"))
        if len(variants) > 1:
            dash = (0, (1, 1.5)) if len(experiments) == 1 else "-"
            styles.append(mlines.Line2D([], [], color="0.3", alpha=0.45, linewidth=1.1,
                                        linestyle=dash, label=f"{variants[1]} (faded)"))
    if styles:
        fig.legend(handles=styles, title="experiment / variant", loc="lower left",
                   bbox_to_anchor=(1.0, 0.05), frameon=False)
    if title is None:
        parts = ([experiments[0]] if len(experiments) == 1 else []) + \
            ([f"downstream task {task}"] if task else [])
        subject = f"\n({', '.join(parts)})" if parts else ""
        title = ("Specialization: activations per layer across the switch from "
                 f"pre-training to downstream training{subject}")
    fig.suptitle(title)
    n_seeds = data.groupby(["experiment", "variant", "init_scale"])["seed"].nunique()
    seeds = (f"{n_seeds.min()}" if n_seeds.min() == n_seeds.max()
             else f"{n_seeds.min()}-{n_seeds.max()}")
    fig.text(0.01, 0.0, f"lines: mean over seeds ({seeds} per configuration); thick border "
             "between the panels of a pair: the switch to the downstream task (shaded side)",
             ha="left", va="top", fontsize="small", color="0.3")
    fig.tight_layout(w_pad=0.3)
    style.save_figure(fig, out_path)
