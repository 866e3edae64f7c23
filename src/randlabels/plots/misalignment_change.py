"""Figure: misalignment of what training changed, Σ(W − W₀), pooled over seeds.

At a large init scale Σw is mostly the initialization's sampling noise, so the
misalignment of the weights stays near its sampling floor whatever training does; the
covariance of the change W − W₀ is where the learned part shows (docs/METHODS.md,
"Pooled over seeds"). This figure draws the rows of the ``misalignment_pooled`` table
whose ``of`` is ``change`` against the epoch, against the data basis and against a
random basis (the control), per init scale (columns) and experiment/layer (rows); the
pooled score of the weights themselves, the stars of the misalignment figure, is drawn
faintly beside it for comparison. Undefined values are counted, never drawn.
"""

from __future__ import annotations

import os

import matplotlib.lines as mlines
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd

from randlabels.analysis.statsfile import OF_CHANGE, OF_WEIGHTS, POOLED_COLUMNS
from randlabels.plots import style

CHANGE_GID, WEIGHTS_GID = "change", "weights"  # gids of the drawn lines (tests and readers find them)
WEIGHTS_ALPHA = 0.35


def _draw(ax, rows: pd.DataFrame, palette: dict, *, gid: str) -> None:
    """One line per label kind and basis of ``rows`` (defined values only)."""
    faint = gid == WEIGHTS_GID
    for (labels, basis), line in rows[np.isfinite(rows["misalignment"])].groupby(["labels", "basis"], sort=False):
        line = line.sort_values("epoch")
        dash = style.BASIS_DASHES.get(basis, (1, 1))
        ax.plot(line["epoch"], line["misalignment"], color=palette.get(labels, "0.3"),
                linestyle=(0, dash) if dash else "-", marker=style.BASIS_MARKERS.get(basis, "s"),
                linewidth=1.0 if faint else 2.0, markersize=4 if faint else 6,
                alpha=WEIGHTS_ALPHA if faint else 1.0, gid=gid, label=f"_{gid} {labels} {basis}")


def _log_axis(ax, values: pd.Series) -> None:
    """Log y: the point is the ratio of the random-basis score to the data-basis one;
    symlog (linear below the smallest positive value) where a score is exactly 0."""
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if positive.empty:
        return
    if (finite <= 0).any():
        ax.set_yscale("symlog", linthresh=float(positive.min()))
    else:
        ax.set_yscale("log")
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(mticker.FuncFormatter(_two_and_five))


def _two_and_five(value: float, _) -> str:
    """Labels of the minor ticks 2·10ᵏ and 5·10ᵏ only: plain numbers, not 2×10¹."""
    if value <= 0:
        return ""
    leading = round(value / 10 ** np.floor(np.log10(value)))
    return f"{value:g}" if leading in (2, 5) else ""


def _facet_title(panel: str, init_scale: float, change: pd.DataFrame) -> str:
    title = (f"{panel}, " if panel else "") + style.format_scale(init_scale)
    if change.empty:
        return title + "\nno change to score (no epoch after 0)"
    undefined = int((~np.isfinite(change["misalignment"])).sum())
    if undefined == len(change):
        return title + "\nchange: every value undefined"
    if undefined:
        return title + f"\nchange: {undefined} of {len(change)} values undefined"
    return title


def _seeds_text(change: pd.DataFrame) -> str:
    """"pooled over N seeds (F filters)", a range where configurations differ."""
    defined = change[np.isfinite(change["misalignment"])]
    if defined.empty:
        return "pooled over seeds"

    def span(column: str) -> str:
        values = pd.to_numeric(defined[column], errors="coerce").dropna().astype(int)
        low, high = values.min(), values.max()
        return f"{low}" if low == high else f"{low}–{high}"

    return f"pooled over {span('seeds')} seeds ({span('filters')} filters)"


def plot(table: pd.DataFrame, out_path: str | os.PathLike) -> None:
    """Draw the pooled misalignment of W − W₀ (and, faintly, of W) against the epoch
    from the ``misalignment_pooled`` table and write the PNG to ``out_path``."""
    style.require_columns(table, POOLED_COLUMNS, "misalignment_change figure")
    style.apply_theme()
    data = table.copy()
    data["misalignment"] = pd.to_numeric(data["misalignment"], errors="coerce")
    data["panel"] = style.panel_labels(data)
    change = data[data["of"] == OF_CHANGE]

    label_order = [lab for lab in ("random", "real") if lab in set(data["labels"])]
    label_order += sorted(set(data["labels"]) - set(label_order))
    palette = style.label_palette(label_order)
    panels, scales = sorted(data["panel"].unique()), sorted(data["init_scale"].unique())
    fig, axes = plt.subplots(len(panels), len(scales), squeeze=False, sharey=True,
                             figsize=(style.FACET_HEIGHT * style.FACET_ASPECT * len(scales),
                                      style.FACET_HEIGHT * len(panels)))
    for i, panel in enumerate(panels):
        for j, init_scale in enumerate(scales):
            ax = axes[i, j]
            facet = data[(data["panel"] == panel) & (data["init_scale"] == init_scale)]
            if facet.empty:  # a combination no experiment has (a combined table)
                ax.axis("off")
                continue
            facet_change = facet[facet["of"] == OF_CHANGE]
            _draw(ax, facet[facet["of"] == OF_WEIGHTS], palette, gid=WEIGHTS_GID)
            _draw(ax, facet_change, palette, gid=CHANGE_GID)
            if not np.isfinite(facet_change["misalignment"]).any():
                ax.text(0.5, 0.5, "no change scored", transform=ax.transAxes,
                        ha="center", va="center", color="0.4")
            ax.set_title(_facet_title(panel, init_scale, facet_change))
            ax.set_xlabel("training epoch")
            if j == 0:
                ax.set_ylabel("pooled misalignment M")
            _log_axis(ax, data["misalignment"])
            ax.tick_params(labelleft=True)  # each facet readable alone, also beside an empty one

    handles = [mlines.Line2D([], [], color=palette[lab], linewidth=2, label=lab) for lab in label_order]
    handles.append(mlines.Line2D([], [], linestyle="", label=""))
    handles += [mlines.Line2D([], [], color="0.3", marker=style.BASIS_MARKERS[basis], label=name,
                              linestyle=(0, style.BASIS_DASHES[basis]) if style.BASIS_DASHES[basis] else "-")
                for basis, name in style.BASIS_NAMES.items() if basis in set(data["basis"])]
    handles.append(mlines.Line2D([], [], linestyle="", label=""))
    handles.append(mlines.Line2D([], [], color="0.3", linewidth=2, label="Σ(W − W₀): what training changed"))
    handles.append(mlines.Line2D([], [], color="0.3", linewidth=1, alpha=WEIGHTS_ALPHA,
                                 label="Σw: the weights (misalignment figure's stars)"))
    fig.legend(handles=handles, title="labels / basis", loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)

    layers, experiments = data["layer"].unique(), data["experiment"].unique()
    subject = f"layer {layers[0]}" if len(layers) == 1 else "per layer"
    if len(experiments) == 1:
        subject += f", {experiments[0]}"
    fig.suptitle("Misalignment of what training changed, Σ(W − W₀), with Σx\n"
                 f"({subject}; {_seeds_text(change)}; M = 0: every eigenvector of Σx is one of Σ(W − W₀))")
    footnote = ("W₀: the same filters at epoch 0; diverged and collapsed runs left out; "
                "the random basis is the control")
    undefined = change[~np.isfinite(change["misalignment"])]
    if not undefined.empty:
        footnote += "\nchange: " + style.reason_text(undefined)
    fig.text(0.01, 0.0, footnote, ha="left", va="top", fontsize="small", color="0.3", wrap=True)
    fig.tight_layout()
    style.save_figure(fig, out_path)
