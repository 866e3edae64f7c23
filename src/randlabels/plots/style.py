"""Shared look of every figure: backend, theme, fixed palettes and an atomic save.

Colours are fixed *per name* (variant, label kind) rather than per position so that
"pretrained" is the same blue in the learning curves and in the transfer summary,
whatever subset of variants a figure happens to show.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: the workflow renders on cluster nodes without a display

import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from randlabels.inits import variants  # noqa: E402
from randlabels.io import atomic_output  # noqa: E402

DPI = 150
#: Height of one facet in inches; figures grow with the number of facets instead.
FACET_HEIGHT = 3.2
FACET_ASPECT = 1.35

#: Seaborn ``errorbar`` for bands over seeds: the full range (min to max) of the
#: seeds. With 3-5 seeds a bootstrap CI is unstable and slow; the range shows the
#: actual spread and is deterministic.
SEED_BAND: tuple[str, int] = ("pi", 100)
SEED_BAND_TEXT = "line: mean over seeds, band: min-max over seeds"

_COLORBLIND = sns.color_palette("colorblind", 10)

#: Fixed colours of the fixed fine-tuning variants, in the order of their names in
#: randlabels.inits.variants.FIXED (scratch grey; a new fixed variant without a colour
#: stops this import); a depth variant (layerwise2, first1, ...) gets a hash-stable
#: colour of its own.
VARIANT_COLORS: dict[str, tuple[float, float, float]] = dict(
    zip(variants.FIXED, [(0.35, 0.35, 0.35), _COLORBLIND[0], _COLORBLIND[1], _COLORBLIND[2]], strict=True)
)
#: Colours for unknown variant names, chosen by a stable hash of the name.
_FALLBACK_COLORS = [c for c in _COLORBLIND if c not in VARIANT_COLORS.values()] + list(
    sns.color_palette("dark", 10)
)

#: Random labels vs real labels.
LABEL_COLORS: dict[str, tuple[float, float, float]] = {
    "random": _COLORBLIND[3],
    "real": _COLORBLIND[0],
}
#: Line dashes for the misalignment basis: the data eigenbasis solid, the Haar control dashed.
BASIS_DASHES: dict[str, tuple | str] = {"data": "", "random": (4, 2)}
BASIS_MARKERS: dict[str, str] = {"data": "o", "random": "X"}
#: Legend names of the misalignment bases.
BASIS_NAMES: dict[str, str] = {"data": "data (eigvecs of Σx)", "random": "random basis (control)"}


def with_task_in_experiment(table: pd.DataFrame) -> pd.DataFrame:
    """The table with its downstream task folded into the experiment name when an
    experiment has several tasks (e.g. 'digits_cnn · random10'), so figures that
    facet by experiment show one facet per task."""
    if "task" not in table.columns or table["task"].nunique() <= 1:
        return table
    named = table.copy()
    named["experiment"] = named["experiment"].astype(str) + " · " + named["task"].astype(str)
    return named


def apply_theme() -> None:
    """Set the common seaborn theme; called by every ``plot`` so figures look alike."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.85,
                  rc={"figure.dpi": DPI, "savefig.dpi": DPI, "axes.titlesize": "medium",
                      "legend.frameon": False})


def variant_color(name: str) -> tuple[float, float, float]:
    """Colour of a variant: fixed for known names, hash-stable for others."""
    if name in VARIANT_COLORS:
        return VARIANT_COLORS[name]
    # crc32, not hash(): Python's str hash is salted per process.
    return _FALLBACK_COLORS[zlib.crc32(name.encode()) % len(_FALLBACK_COLORS)]


def variant_palette(names: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    """Palette dict for the given variant names (seaborn ``palette=``)."""
    return {name: variant_color(name) for name in names}


def label_palette(names: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    """Palette dict for label kinds; unknown kinds fall back like variants."""
    return {name: LABEL_COLORS.get(name, variant_color(name)) for name in names}


def sequential_palette(values: Sequence, name: str = "viridis", low: float = 0.05,
                       high: float = 0.85) -> dict:
    """Ordered values (epochs, init scales) to colours of a sequential colormap.

    Only the [low, high] part of the colormap is used so that no colour is too pale
    to see on a white background.
    """
    ordered = sorted(set(values))
    cmap = matplotlib.colormaps[name]
    if len(ordered) == 1:
        return {ordered[0]: cmap(low + 0.4 * (high - low))[:3]}
    return {v: cmap(x)[:3] for v, x in zip(ordered, np.linspace(low, high, len(ordered)))}


def variant_order(names: Iterable[str]) -> list[str]:
    """The fixed variants in their canonical order (baseline first), the others after, sorted."""
    names = list(dict.fromkeys(names))
    known = [v for v in variants.FIXED if v in names]
    return known + sorted(n for n in names if n not in variants.FIXED)


def format_scale(value: float) -> str:
    """Short label for an init scale, e.g. ``0.5`` -> ``"init scale 0.5"``."""
    return f"init scale {float(value):g}"


def panel_labels(table: pd.DataFrame) -> pd.Series:
    """Row facet name (of the misalignment figures) from whichever of experiment/layer actually varies."""
    parts = [c for c in ("experiment", "layer") if table[c].nunique() > 1]
    if not parts:
        return pd.Series("", index=table.index)
    return table[parts].astype(str).agg(" / ".join, axis=1)


def reason_text(undefined: pd.DataFrame) -> str:
    """Footnote listing why values were undefined (NaN), with counts."""
    if "reason" not in undefined.columns:
        return f"{len(undefined)} undefined value(s) (NaN) not drawn."
    reasons = undefined["reason"].fillna("").astype(str).replace("", "no reason given")
    counts = reasons.value_counts()
    listed = "; ".join(f"{reason} (×{count})" for reason, count in counts.items())
    return f"{len(undefined)} undefined value(s) (NaN) left out: {listed}"


def speedup_gaps(counts, baseline: str = variants.SCRATCH, variant: str = "this") -> list[tuple[str, int]]:
    """Why some seeds of a figure's cell or point have no finite speed-up, as (label,
    count) pairs with a count: only the ``baseline`` run reached the target, only the
    ``variant``, neither or a run diverged ("n/r"), infinite ("∞"). ``counts`` holds
    ``n_nan``, ``n_inf`` and optionally ``n_only_baseline`` / ``n_only_variant``."""
    only_base, only_variant = int(counts.get("n_only_baseline", 0)), int(counts.get("n_only_variant", 0))
    pairs = [(f"only {baseline} reached", only_base), (f"only {variant} reached", only_variant),
             ("n/r", int(counts["n_nan"]) - only_base - only_variant), ("∞", int(counts["n_inf"]))]
    return [(label, count) for label, count in pairs if count]


def require_columns(frame: pd.DataFrame, columns: Sequence[str], figure: str) -> None:
    """Refuse an empty or malformed table with a message naming the figure."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{figure}: missing column(s) {missing}; have {list(frame.columns)}")
    if frame.empty:
        raise ValueError(f"{figure}: the table is empty, nothing to plot")


def save_figure(fig: matplotlib.figure.Figure, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG at :data:`DPI` atomically, then close it to free memory.

    The temporary file has no ``.png`` suffix, hence the explicit ``format``.
    """
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
