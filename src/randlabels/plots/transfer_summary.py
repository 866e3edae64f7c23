"""Figure: speed-up (steps to target, scratch ÷ variant) and area-under-curve gap
per variant and init scale.

One number per claim: above the "no transfer" line at 1 the variant trains faster
than scratch. Points are means over seeds with 95 % Student-t intervals (see
:func:`randlabels.analysis.summary.mean_and_ci`), individual seeds are drawn faintly behind
them, and each point says how many of its runs gave a defined speed-up (the others
diverged or never reached the target), so missing runs stay visible.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from randlabels.analysis.summary import mean_and_ci
from randlabels.inits import variants
from randlabels.plots import style

COLUMNS = ["experiment", "init_scale", "variant", "seed", "speedup", "auc_gap"]

# (column, reference value meaning "no transfer", y label)
METRICS = (
    ("speedup", 1.0, "speed-up\n(steps of {baseline} ÷ variant)"),
    ("auc_gap", 0.0, "gain in area under curve\n(variant − {baseline})"),
)


def _draw_metric(ax, data, stats, metric, reference, variants, scales, palette, offsets, seed_shift):
    """Means with intervals (and faint single seeds) of one metric in one panel."""
    ax.axhline(reference, color="0.25", linestyle="--", linewidth=1.0)
    for j, scale in enumerate(scales):
        for i, variant in enumerate(variants):
            x = i + offsets[j]
            runs = data[(data["variant"] == variant) & (data["init_scale"] == scale)]
            row = stats[(stats["variant"] == variant) & (stats["init_scale"] == scale)]
            if row.empty:
                continue
            row = row.iloc[0]
            seeds = runs[metric][np.isfinite(runs[metric])]
            # Single seeds just right of the mean so the error bar does not hide them.
            ax.scatter(np.full(len(seeds), x + seed_shift), seeds, s=12,
                       color=palette[scale], alpha=0.35, linewidths=0, zorder=2)
            if row["n"] > 0:
                ax.errorbar(x, row["mean"], yerr=[[row["mean"] - row["ci_low"]],
                                                  [row["ci_high"] - row["mean"]]],
                            fmt="o", color=palette[scale], markersize=6, capsize=3,
                            linewidth=1.5, zorder=3)
                label_y = row["ci_high"]
            else:
                label_y = reference
            if row["n"] < row["total"]:
                ax.annotate(f"{int(row['n'])}/{int(row['total'])}", (x, label_y),
                            xytext=(0, 4), textcoords="offset points", ha="center",
                            va="bottom", fontsize="x-small", color=palette[scale])
    ax.set_xticks(range(len(variants)), [v.replace("_", "\n") for v in variants])
    ax.set_xlim(-0.6, len(variants) - 0.4)
    ax.grid(False, axis="x")


def plot(summary: pd.DataFrame, out_path: str | os.PathLike, target: float | None = None,
         baseline: str = variants.SCRATCH) -> None:
    """Draw speed-up (top) and area-under-curve gap (bottom) per variant and init scale.

    ``summary`` is the output of :func:`randlabels.analysis.summary.transfer_summary`; the
    ``baseline`` rows (speed-up 1 and gap 0 by construction) are left out. The gap is
    defined even where scratch never reaches the target, so both rows together show
    every init scale. The target accuracy is the table's own (its ``target`` column,
    resolved per task; a target relative to chance differs between class counts, and
    then each panel names its own); ``target`` is used only by a table without one.
    """
    style.require_columns(summary, COLUMNS, "transfer-summary figure")
    style.apply_theme()
    summary = style.with_task_in_experiment(summary)
    data = summary[summary["variant"] != baseline]
    if data.empty:
        raise ValueError(f"transfer-summary figure: only the baseline {baseline!r} is present")
    if "target" not in data.columns:
        if target is None:
            raise ValueError("transfer-summary figure: the table has no target column and no target was given")
        data = data.assign(target=float(target))
    panel_targets = data.groupby("experiment")["target"].first()
    one_target = data["target"].nunique() == 1
    keys = ["experiment", "variant", "init_scale"]
    totals = data.groupby(keys).size().rename("total")

    experiments = sorted(data["experiment"].unique())
    variants = style.variant_order(data["variant"])
    scales = sorted(data["init_scale"].unique())
    palette = style.sequential_palette(scales, "plasma", low=0.0, high=0.7)
    width = 0.7
    step = width / len(scales)
    offsets = (np.arange(len(scales)) - (len(scales) - 1) / 2) * step

    fig, axes = plt.subplots(len(METRICS), len(experiments), squeeze=False, sharex=True,
                             figsize=(max(3.8, 1.1 * len(variants) * (1 + 0.2 * len(scales))
                                          ) * len(experiments) + 1.5, 7.0))
    for row_index, (metric, reference, ylabel) in enumerate(METRICS):
        stats = mean_and_ci(data, keys, metric).join(totals, on=keys)
        for col, experiment in enumerate(experiments):
            ax = axes[row_index, col]
            _draw_metric(ax, data[data["experiment"] == experiment],
                         stats[stats["experiment"] == experiment], metric, reference,
                         variants, scales, palette, offsets, 0.25 * step)
            if row_index == 0:
                ax.set_title(experiment if one_target else f"{experiment}\n(target {panel_targets[experiment]:.0%})")
            if row_index == len(METRICS) - 1:
                ax.set_xlabel("initialization variant")
        axes[row_index, 0].set_ylabel(ylabel.format(baseline=baseline))
    low, high = axes[0, 0].get_ylim()
    axes[0, 0].set_ylim(min(0.0, low), max(high, 1.2))

    handles = [plt.Line2D([], [], marker="o", linestyle="", color=palette[s],
                          label=f"{s:g}") for s in scales]
    handles.append(plt.Line2D([], [], color="0.25", linestyle="--", label="no transfer"))
    fig.legend(handles=handles, title="init scale", loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)
    reached = f"{data['target'].iloc[0]:.0%}" if one_target else "each panel's target"
    fig.suptitle(f"Transfer from pre-training: speed-up to {reached} downstream train accuracy\n"
                 f"and gain in area under the learning curve (above the dashed line = better than {baseline})")
    fig.text(0.01, 0.0, "points: mean over seeds with 95% t-interval; faint dots: single seeds\n"
             "k/n: runs with a defined value (others diverged or never reached the target)",
             ha="left", va="top", fontsize="small", color="0.3")
    fig.tight_layout()
    style.save_figure(fig, out_path)
