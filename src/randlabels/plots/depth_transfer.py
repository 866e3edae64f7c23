"""Figure: downstream transfer against depth k (how many layers are set from data).

Three targets share this figure. Each "depth family" sets k layers of the network
and trains downstream from there; the figure asks how the benefit changes with k:

* ``layerwise`` -- the first k layers constructed layer by layer from the data
  covariance seen through the layers below (claim 4, paper §2.5), k = 0..K;
* ``first`` / ``last`` -- only the first k or only the last k pre-trained layers
  transferred (review question: what if the last layers are transferred?);
* ``covariance`` -- weights built from the data covariance alone, no training at
  all (review question: is that enough to accelerate training?).

Top row of each block: gain in area under the learning curve (variant − scratch),
always defined. Bottom row: speed-up in steps to the target accuracy (scratch ÷
variant, log axis, > 1 = positive transfer); runs whose speed-up is undefined
(never reached the target, diverged, or infinite) are counted at the bottom of the
panel instead of being dropped; where the table has the runs' ``reached`` column, the
runs that never reached the target while their scratch partner did are counted as
such ("only scratch reached": negative transfer), and the reverse. Variants without a depth (``pretrained``,
``gaussian``, ...) are drawn as labelled horizontal reference lines at their mean.
Columns are init scales; several (experiment, task) pairs become separate blocks of
rows, named in the panel titles.
"""

from __future__ import annotations

import os

import matplotlib.lines as mlines
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import matplotlib.transforms as mtransforms
import numpy as np
import pandas as pd
import seaborn as sns

from randlabels.analysis.summary import one_side_reached
from randlabels.inits import variants
from randlabels.plots import style

COLUMNS = ["experiment", "task", "init_scale", "variant", "family", "depth", "seed",
           "speedup", "auc_gap"]
GROUP = ["experiment", "task"]

# (column, value meaning "no transfer", y label, axis scale)
METRICS = (
    ("auc_gap", 0.0, "gain in area under curve\n(variant − {baseline})", "linear"),
    ("speedup", 1.0, "speed-up to target\n({baseline} steps ÷ variant steps)", "log"),
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _defined(values: np.ndarray, metric: str) -> np.ndarray:
    """Mask of usable values: finite, and positive for the (log-scale) speed-up."""
    ok = np.isfinite(values)
    if metric == "speedup":
        ok &= values > 0
    return ok


def summarise(values, metric: str, only_baseline=None, only_variant=None) -> dict:
    """Centre, range and counts of one metric over seeds.

    The speed-up is a ratio, so its centre is the geometric mean (the arithmetic mean
    of its logarithm); the area gap is a difference, so its centre is the arithmetic
    mean. ``low``/``high`` are the min and max of the defined values; ``n`` counts
    defined values, ``n_nan`` NaN ones (target never reached or run diverged) and
    ``n_inf`` infinite (or, for the speed-up, non-positive) ones. Of the NaN speed-ups,
    ``n_only_baseline`` and ``n_only_variant`` count those the masks
    ``only_baseline`` / ``only_variant`` (:func:`one_side_reached`) flag.
    """
    values = np.asarray(values, dtype=float)
    ok = _defined(values, metric)
    good = values[ok]
    if good.size == 0:
        centre = low = high = float("nan")
    else:
        centre = float(np.exp(np.log(good).mean())) if metric == "speedup" else float(good.mean())
        low, high = float(good.min()), float(good.max())
    n_nan = int(np.isnan(values).sum())
    unset = np.isnan(values) if metric == "speedup" else np.zeros(values.size, dtype=bool)

    def flagged(mask) -> int:
        return 0 if mask is None else int((unset & np.asarray(mask, dtype=bool)).sum())

    return {"centre": centre, "low": low, "high": high, "n": int(ok.sum()),
            "total": int(values.size), "n_nan": n_nan,
            "n_inf": int(values.size - ok.sum() - n_nan),
            "n_only_baseline": flagged(only_baseline), "n_only_variant": flagged(only_variant)}


def _prepare(table: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """The rows of every family but the baseline, numeric, with the
    :func:`one_side_reached` flags (``_only_baseline``, ``_only_variant``)."""
    data = table.reset_index(drop=True)
    for column in ("depth", "speedup", "auc_gap", "init_scale"):
        data[column] = pd.to_numeric(data[column], errors="coerce")
    data["family"] = data["family"].astype(str)
    data["experiment"] = data["experiment"].astype(str)
    data["task"] = data["task"].astype(str)
    data["_only_baseline"], data["_only_variant"] = one_side_reached(data, baseline)
    return data[data["family"] != baseline]


def depth_statistics(table: pd.DataFrame, baseline: str = variants.SCRATCH) -> pd.DataFrame:
    """One row per (experiment, task, init_scale, family, depth, metric) with the
    :func:`summarise` columns, for the rows that have a depth."""
    style.require_columns(table, COLUMNS, "depth-transfer figure")
    data = _prepare(table, baseline)
    data = data[np.isfinite(data["depth"])]
    rows = []
    for key, runs in data.groupby([*GROUP, "init_scale", "family", "depth"], sort=True):
        for metric, *_ in METRICS:
            rows.append({**dict(zip([*GROUP, "init_scale", "family", "depth"], key)),
                         "metric": metric, **_summarise_runs(runs, metric)})
    return pd.DataFrame(rows, columns=[*GROUP, "init_scale", "family", "depth", "metric",
                                       "centre", "low", "high", "n", "total", "n_nan", "n_inf",
                                       "n_only_baseline", "n_only_variant"])


def _summarise_runs(runs: pd.DataFrame, metric: str) -> dict:
    """:func:`summarise` of prepared rows (:func:`_prepare`), with their flags."""
    return summarise(runs[metric], metric, runs["_only_baseline"], runs["_only_variant"])


_CB = sns.color_palette("colorblind", 10)
#: Colours of the depth families named in the workflow, distinct from the variant
#: colours of the reference lines (pretrained blue, gaussian green, scratch grey).
FAMILY_COLORS = {"layerwise": _CB[3], "covariance": _CB[4], "first": _CB[1],
                 "last": sns.color_palette("dark", 10)[0]}


def _colours(depth_families: list[str], references: list[str]) -> dict:
    """Fixed colours where they do not collide, distinct fallbacks otherwise."""
    colours: dict[str, tuple] = {}
    spare = [c for c in _CB + sns.color_palette("dark", 10)
             if c != style.variant_color(variants.SCRATCH)]
    for name in references + depth_families:
        colour = FAMILY_COLORS.get(name, style.variant_color(name)) \
            if name in depth_families else style.variant_color(name)
        if colour in colours.values():
            colour = next(c for c in spare if c not in colours.values())
        colours[name] = colour
    return colours


def _place_labels(ax, labels: list[tuple[float, str, tuple]], log: bool) -> None:
    """Write reference-line labels at the right edge, nudged apart so none overlap."""
    low, high = ax.get_ylim()

    def frac(y: float) -> float:
        if log:
            return (np.log(y) - np.log(low)) / (np.log(high) - np.log(low))
        return (y - low) / (high - low)

    placed: list[float] = []
    for y, text, colour in sorted(labels, key=lambda item: -item[0]):
        pos = frac(y) + 0.01
        while any(abs(pos - other) < 0.065 for other in placed):
            pos -= 0.065
        placed.append(pos)
        ax.text(0.99, pos, text, transform=ax.transAxes, ha="right", va="bottom",
                fontsize="x-small", color=colour,
                bbox=dict(boxstyle="square,pad=0.05", facecolor="white", alpha=0.7, linewidth=0))


def _log_ticks(ax) -> None:
    """Plain "1×, 2×, 5×" labels on a log speed-up axis instead of powers of ten."""
    ax.yaxis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(mticker.LogLocator(base=10, subs=(1.5, 3.0, 4.0, 7.0)))
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.yaxis.set_minor_formatter(mticker.NullFormatter())


def _undefined_note(stat: pd.Series, baseline: str = variants.SCRATCH) -> str:
    return ", ".join(f"{count}/{stat['total']} {label}" for label, count in style.speedup_gaps(stat, baseline))


def _limits(values: list[float], reference: float, log: bool) -> tuple[float, float]:
    """Axis limits that include every drawn value and the no-transfer line."""
    arr = np.asarray([v for v in values if np.isfinite(v) and (v > 0 or not log)] + [reference])
    low, high = float(arr.min()), float(arr.max())
    if log:
        return low / 1.4, high * 1.4
    pad = 0.12 * (high - low) if high > low else 0.05
    return low - 1.6 * pad, high + pad  # extra room at the bottom for the n/r counts


def plot(table: pd.DataFrame, out_path: str | os.PathLike, title: str | None = None,
         baseline: str = variants.SCRATCH) -> None:
    """Draw transfer against depth k and write the PNG to ``out_path``.

    ``table`` is a transfer summary with a ``family`` and a ``depth`` column (depth
    NaN for variants without one). ``title`` replaces the default figure title;
    ``baseline`` names the family that is the no-transfer reference (left out; its
    speed-up is 1 and its gap 0 by construction, drawn as the dashed line).
    """
    style.require_columns(table, COLUMNS, "depth-transfer figure")
    style.apply_theme()
    data = _prepare(table, baseline)
    with_depth = data[np.isfinite(data["depth"])]
    if with_depth.empty:
        raise ValueError("depth-transfer figure: no row has a depth (a finite `depth` value); "
                         f"families present: {sorted(data['family'].unique())}")
    stats = depth_statistics(table, baseline)
    refs = data[~np.isfinite(data["depth"])]

    groups = sorted(set(map(tuple, data[GROUP].drop_duplicates().to_numpy())))
    scales = sorted(data["init_scale"].dropna().unique())
    families = list(dict.fromkeys(with_depth["family"]))
    ref_names = style.variant_order(refs["family"].unique())
    colours = _colours(families, ref_names)
    markers = {f: MARKERS[i % len(MARKERS)] for i, f in enumerate(families)}
    depths = sorted(with_depth["depth"].unique())

    nrows = len(METRICS) * len(groups)
    fig, axes = plt.subplots(nrows, len(scales), squeeze=False, sharex=True,
                             figsize=(3.9 * len(scales) + 2.2, 2.7 * nrows + 1.0))
    any_undefined = False
    for g, group in enumerate(groups):
        group_refs = refs[(refs["experiment"] == group[0]) & (refs["task"] == group[1])]
        for m, (metric, reference, ylabel, scale_kind) in enumerate(METRICS):
            row = g * len(METRICS) + m
            row_values: list[float] = []
            ref_labels: dict[int, list] = {}
            for c, init_scale in enumerate(scales):
                ax = axes[row, c]
                ax.axhline(reference, color="0.25", linestyle="--", linewidth=1.0, zorder=1)
                sel = stats[(stats["experiment"] == group[0]) & (stats["task"] == group[1])
                            & (stats["init_scale"] == init_scale) & (stats["metric"] == metric)]
                note_slot = {}
                for family in families:
                    fam = sel[sel["family"] == family].sort_values("depth")
                    if fam.empty:
                        continue
                    colour = colours[family]
                    ax.fill_between(fam["depth"], fam["low"], fam["high"], color=colour,
                                    alpha=0.18, linewidth=0, zorder=2)
                    ax.plot(fam["depth"], fam["centre"], color=colour, marker=markers[family],
                            markersize=4.5, linewidth=1.6, zorder=3)
                    row_values += list(fam["low"]) + list(fam["high"])
                    for _, stat in fam.iterrows():
                        note = _undefined_note(stat, baseline)
                        if not note:
                            continue
                        any_undefined = True
                        slot = note_slot.get(stat["depth"], 0)
                        note_slot[stat["depth"]] = slot + 1
                        ax.annotate(note, xy=(stat["depth"], 0.02 + 0.08 * slot),
                                    xycoords=mtransforms.blended_transform_factory(
                                        ax.transData, ax.transAxes),
                                    ha="center", va="bottom", fontsize="x-small", color=colour)
                ref_here = group_refs[group_refs["init_scale"] == init_scale]
                for name in ref_names:
                    stat = _summarise_runs(ref_here[ref_here["family"] == name], metric)
                    if stat["total"] == 0:
                        continue
                    # Where only one side of some pairs reached the target, say which.
                    one_side = _undefined_note(stat, baseline) if stat["n_only_baseline"] + stat["n_only_variant"] else ""
                    if stat["n"] == 0:
                        any_undefined = True
                        ax.annotate(f"{name}: " + (one_side or f"undefined ({stat['total']} runs)"),
                                    xy=(0.98, 0.97 - 0.08 * ref_names.index(name)),
                                    xycoords="axes fraction", ha="right", va="top",
                                    fontsize="x-small", color=colours[name])
                        continue
                    ax.axhline(stat["centre"], color=colours[name], linestyle=(0, (5, 2)),
                               linewidth=1.2, alpha=0.9, zorder=1)
                    label = f"{name} {stat['centre']:.3g}"
                    if stat["n"] < stat["total"]:
                        any_undefined = True
                        label += f" ({stat['n']}/{stat['total']} defined" + (f"; {one_side})" if one_side else ")")
                    ref_labels.setdefault(c, []).append((stat["centre"], label, colours[name]))
                    row_values.append(stat["centre"])
                if scale_kind == "log":
                    ax.set_yscale("log")
                    _log_ticks(ax)
                if m == 0:
                    prefix = f"{group[0]} / {group[1]}\n" if len(groups) > 1 else ""
                    ax.set_title(prefix + style.format_scale(init_scale))
                if row == nrows - 1:
                    ax.set_xlabel("depth k (layers set from data / transferred)")
                if c == 0:
                    ax.set_ylabel(ylabel.format(baseline=baseline))
            low, high = _limits(row_values, reference, scale_kind == "log")
            for c, ax in enumerate(axes[row]):
                ax.set_ylim(low, high)
                _place_labels(ax, ref_labels.get(c, []), scale_kind == "log")
    for ax in axes.flat:
        ax.set_xticks(depths, [f"{d:g}" for d in depths])

    handles = [mlines.Line2D([], [], color=colours[f], marker=markers[f], linewidth=1.6,
                             label=f) for f in families]
    handles += [mlines.Line2D([], [], color=colours[n], linestyle=(0, (5, 2)),
                              label=f"{n} (no depth, mean)") for n in ref_names]
    handles.append(mlines.Line2D([], [], color="0.25", linestyle="--",
                                 label=f"no transfer ({baseline})"))
    fig.legend(handles=handles, title="family", loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)
    if title is None:
        subject = "" if len(groups) > 1 else f" ({groups[0][0]}, downstream {groups[0][1]})"
        title = f"Transfer against the number k of layers set from data{subject}"
    fig.suptitle(title)
    footnote = ("lines: mean over seeds (speed-up: geometric mean), band: min-max over seeds; "
                "dashed coloured lines: variants without a depth")
    if len(groups) > 1:
        footnote += "\nrow blocks: one per experiment / downstream task (named in the titles)"
    if any_undefined:
        footnote += (f"\nk/n only {baseline} reached: the variant never reached the target, its "
                     f"{baseline} partner did (negative transfer); only this reached: the reverse"
                     "\nk/n n/r: neither reached the target, or a run diverged; k/n ∞: infinite "
                     "speed-up; all left out of the mean")
    fig.text(0.01, 0.0, footnote, ha="left", va="top", fontsize="small", color="0.3")
    fig.tight_layout()
    style.save_figure(fig, out_path)
