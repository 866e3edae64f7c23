"""Figure: downstream training accuracy against steps, one colour per variant.

This is the raw evidence behind claims 2 and 3 (pre-trained and Gaussian-sampled
first layers train faster than scratch). Bands show the spread over seeds; facets
split init scales (columns) and experiments (rows); a row shows only the scales its
experiment has (the paper config's ablations use other scales than plain VGG16). Diverged runs are excluded from
the mean and band (their accuracy after divergence is meaningless) but are drawn as
thin dotted lines and counted in the legend and facet titles, so nothing disappears
silently.
"""

from __future__ import annotations

import os

import matplotlib.lines as mlines
import pandas as pd
import seaborn as sns

from randlabels.plots import style

COLUMNS = ["experiment", "variant", "init_scale", "seed", "step", "train_acc", "diverged"]
RUN = ["experiment", "variant", "init_scale", "seed"]


def _flag_diverged_runs(curves: pd.DataFrame) -> pd.DataFrame:
    """Mark every row of a run as diverged if any of its steps is flagged."""
    data = curves.copy()
    flag = data["diverged"]
    if flag.dtype != bool:
        flag = flag.astype(str).str.strip().str.lower().isin({"true", "1"})
    data["run_diverged"] = flag.groupby([data[k] for k in RUN]).transform("any")
    return data


def plot(curves: pd.DataFrame, out_path: str | os.PathLike) -> None:
    """Draw train accuracy against step per variant and write the PNG to ``out_path``."""
    style.require_columns(curves, COLUMNS, "learning-curves figure")
    style.apply_theme()
    data = _flag_diverged_runs(style.with_task_in_experiment(curves))
    variants = style.variant_order(data["variant"])
    palette = style.variant_palette(variants)
    several_rows = data["experiment"].nunique() > 1

    runs = data.drop_duplicates(RUN)
    totals = runs.groupby("variant").size()
    bad = runs[runs["run_diverged"]].groupby("variant").size()
    names = {v: v if v not in bad else f"{v} ({bad[v]}/{totals[v]} runs diverged)"
             for v in variants}

    # A plain FacetGrid drawn facet by facet (not relplot): a facet, or every run,
    # may have diverged, leaving nothing for the mean that relplot could draw.
    grid = sns.FacetGrid(
        data, col="init_scale", col_order=sorted(data["init_scale"].unique()),
        row="experiment" if several_rows else None,
        row_order=sorted(data["experiment"].unique()) if several_rows else None,
        height=style.FACET_HEIGHT, aspect=style.FACET_ASPECT, sharey=True,
    )
    for key, ax in grid.axes_dict.items():
        experiment, init_scale = key if several_rows else (data["experiment"].iloc[0], key)
        facet = data[(data["experiment"] == experiment) & (data["init_scale"] == init_scale)]
        if facet.empty:  # an experiment without this init scale: no empty panel
            ax.set_visible(False)
            continue
        healthy = facet[~facet["run_diverged"] & facet["train_acc"].notna()]
        if not healthy.empty:
            sns.lineplot(data=healthy, x="step", y="train_acc", hue="variant",
                         hue_order=[v for v in variants if v in set(healthy["variant"])],
                         palette=palette, estimator="mean", errorbar=style.SEED_BAND,
                         linewidth=1.6, legend=False, ax=ax)
        for (variant, _seed), run in facet[facet["run_diverged"]].groupby(["variant", "seed"]):
            run = run.sort_values("step")
            ax.plot(run["step"], run["train_acc"], linestyle=":", linewidth=1.0,
                    color=palette[variant], alpha=0.9)
        title = style.format_scale(init_scale)
        if several_rows:
            title = f"{experiment}, {title}"
        n_bad = facet.loc[facet["run_diverged"]].drop_duplicates(RUN).shape[0]
        if n_bad:
            title += f"\n{n_bad} diverged run{'s' if n_bad > 1 else ''} (dotted, not in mean)"
        ax.set_title(title)
        ax.set_ylim(0, 1.02)
    grid.set_axis_labels("downstream training step", "downstream train accuracy")

    handles = [mlines.Line2D([], [], color=palette[v], linewidth=2, label=names[v])
               for v in variants]
    if len(bad):
        handles.append(mlines.Line2D([], [], color="0.3", linestyle=":",
                                     label="diverged run (per seed)"))
    grid.figure.legend(handles=handles, title="variant", loc="center left",
                       bbox_to_anchor=(1.0, 0.5), frameon=False)
    title = "Downstream training speed by initialization variant"
    if not several_rows:
        title += f" ({data['experiment'].iloc[0]})"
    grid.figure.suptitle(title)
    grid.figure.text(0.01, 0.0, style.SEED_BAND_TEXT, ha="left", va="top",
                     fontsize="small", color="0.3")
    grid.tight_layout()
    style.save_figure(grid.figure, out_path)
