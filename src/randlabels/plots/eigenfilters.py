"""Figure: first-layer filters beside the top eigenvectors of Σw and of Σx.

If training on random labels aligns Σw with Σx (claim 1), the leading eigenvectors of
the filter covariance look like those of the image-patch covariance (smooth, low
frequency, colour-opponent), even though single filters look like noise. Rows of small
images make that visible: sampled filters, eigenvectors of Σw, of Σ(W − W₀) (what
training changed, where the table has it), of Σx.

:func:`plot` draws the eigen-filter table (:mod:`randlabels.analysis.eigenfilters`) like every
figure module draws its table; :func:`draw` is the same figure from arrays.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from randlabels.analysis.eigenfilters import nothing_pooled
from randlabels.analysis.eigenfilters import vectors as table_vectors
from randlabels.plots import style

ROW_LABELS = {"filter": "filters\n(sample)", "eigvec_w": "eigvecs\nof Σw",
              "eigvec_change": "eigvecs of\nΣ(W − W₀)", "eigvec_x": "eigvecs\nof Σx"}


def _to_image(vector: np.ndarray, kernel_shape: Sequence[int]) -> tuple[np.ndarray, dict]:
    """One flattened (C_in, k, k) vector to an image and its ``imshow`` keywords.

    Values are scaled symmetrically around 0.5 (zero = mid grey) because the sign of an
    eigenvector is arbitrary and a filter's zero level matters more than its range.
    """
    c_in, kh, kw = kernel_shape
    kernel = np.asarray(vector, dtype=float).reshape(c_in, kh, kw)
    if c_in == 3:
        image = kernel.transpose(1, 2, 0)
        peak = np.abs(image).max()
        image = image / (2 * peak) + 0.5 if peak > 0 else np.full_like(image, 0.5)
        return np.clip(image, 0.0, 1.0), {}
    image = kernel[0]  # grayscale; for C_in other than 1 and 3, the first channel
    peak = float(np.abs(image).max()) or 1.0
    return image, {"cmap": "gray", "vmin": -peak, "vmax": peak}


def _top_columns(eigvec: np.ndarray, eigval: np.ndarray | None,
                 count: int) -> tuple[np.ndarray, list[str]]:
    """The ``count`` leading eigenvectors and their titles.

    Without eigenvalues the columns are taken to be sorted by decreasing eigenvalue
    already (rank 0 = largest, as in the transfer-function table); with them, they are
    sorted here, so ``numpy.linalg.eigh`` output (ascending) can be passed directly.
    """
    if eigval is None:
        order = np.arange(count)
        titles = [f"#{i + 1}" for i in order]
    else:
        eigval = np.asarray(eigval, dtype=float)
        order = np.argsort(eigval)[::-1][:count]
        titles = [f"#{r + 1}  λ={eigval[i]:.2g}" for r, i in enumerate(order)]
    return eigvec[:, order], titles


def plot(table: pd.DataFrame, out_path: str | os.PathLike, n_show: int = 8) -> None:
    """Draw the first experiment of an eigen-filter table (one experiment's, or a paper
    target's with several); write ``out_path``."""
    if table.empty:
        raise ValueError("eigenfilters: the table is empty")
    rows = table[table["experiment"] == table["experiment"].iloc[0]]
    first = rows.iloc[0]
    subject = f"{first['experiment']}: layer {first['layer']}"
    reason = nothing_pooled(rows)
    if reason:
        _draw_nothing_pooled(f"{subject}, nothing to pool", reason, out_path)
        return
    notes = [f"{label}: {_text(first.get(column))}" for column, label in
             (("collapsed", "collapsed (pooled)"), ("left_out", "left out")) if _text(first.get(column))]
    filters, columns, _ = table_vectors(rows, "filter")
    eigvec_w, _, eigval_w = table_vectors(rows, "eigvec_w")
    eigvec_x, _, eigval_x = table_vectors(rows, "eigvec_x")
    change = {}
    if (rows["kind"] == "eigvec_change").any():
        eigvec_c, _, eigval_c = table_vectors(rows, "eigvec_change")
        change = {"eigvec_change": eigvec_c, "eigval_change": eigval_c}
    draw(filters.T, eigvec_w, eigvec_x, (int(first["c_in"]), int(first["kh"]), int(first["kw"])), out_path,
         n_show=n_show, eigval_w=eigval_w, eigval_x=eigval_x, filter_names=[int(c) for c in columns], **change,
         title=f"{subject}, {int(first['filters'])} filters pooled "
               f"over {int(first['seeds'])} seeds ({first['labels']} labels, init scale {first['init_scale']:g})"
               + "".join(f"\n{note}" for note in notes))


def _text(value) -> str:
    """A text cell of the table as read back ("" for an empty one, which reads as NaN)."""
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _draw_nothing_pooled(title: str, reason: str, out_path: str | os.PathLike) -> None:
    """The figure of an experiment none of whose seeds could be pooled: the reason."""
    style.apply_theme()
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.axis("off")
    ax.text(0.5, 0.5, reason, transform=ax.transAxes, ha="center", va="center", wrap=True, color="0.3")
    fig.suptitle(title, fontsize="medium")
    style.save_figure(fig, out_path)


def draw(filters: np.ndarray, eigvec_w: np.ndarray, eigvec_x: np.ndarray,
         kernel_shape: Sequence[int], out_path: str | os.PathLike, n_show: int = 8,
         title: str = "", eigval_w: np.ndarray | None = None,
         eigval_x: np.ndarray | None = None, filter_names: Sequence[int] | None = None,
         eigvec_change: np.ndarray | None = None, eigval_change: np.ndarray | None = None) -> None:
    """Draw sampled filters and top eigenvectors of Σw, of Σ(W − W₀) when
    ``eigvec_change`` is given, and of Σx; write ``out_path``.

    ``filters`` is (n, d); ``eigvec_w`` and ``eigvec_x`` hold unit eigenvectors as
    columns (d, m); ``kernel_shape`` = (C_in, k, k) with d = C_in·k·k in the conv weight's
    flatten order. C_in = 1 is shown in grayscale, C_in = 3 as RGB, otherwise the first
    channel. Filters are a fixed-seed random sample so the figure is reproducible; with
    ``filter_names`` (their indices in a larger stack, already a sample) the first
    ``n_show`` are drawn under those names.
    """
    filters = np.atleast_2d(np.asarray(filters, dtype=float))
    eigvecs = {"eigvec_w": (eigvec_w, eigval_w), "eigvec_change": (eigvec_change, eigval_change),
               "eigvec_x": (eigvec_x, eigval_x)}  # the rows, top to bottom
    eigvecs = {kind: (np.asarray(v, dtype=float), values) for kind, (v, values) in eigvecs.items() if v is not None}
    if len(kernel_shape) != 3:
        raise ValueError(f"eigenfilters: kernel_shape must be (C_in, k, k), got {kernel_shape}")
    d = int(np.prod(kernel_shape))
    for name, array, axis in (("filters", filters, 1), *((kind, v, 0) for kind, (v, _) in eigvecs.items())):
        if array.ndim != 2 or array.shape[axis] != d:
            raise ValueError(f"eigenfilters: {name} has shape {array.shape}, expected "
                             f"dimension {d} = prod{tuple(kernel_shape)} on axis {axis}")
    n_cols = int(min(n_show, filters.shape[0], *(v.shape[1] for v, _ in eigvecs.values())))
    if n_cols < 1:
        raise ValueError("eigenfilters: nothing to show (n_show or an input is empty)")
    style.apply_theme()

    if filter_names is None:
        pick = np.sort(np.random.default_rng(0).choice(filters.shape[0], n_cols, replace=False))
        names = list(pick)
    else:
        pick, names = np.arange(n_cols), list(filter_names)[:n_cols]
    rows = {"filter": ([filters[i] for i in pick], [f"filter {name}" for name in names])}
    for kind, (vectors, values) in eigvecs.items():
        top, titles = _top_columns(vectors, values, n_cols)
        rows[kind] = (list(top.T), titles)

    fig, axes = plt.subplots(len(rows), n_cols, squeeze=False,
                             figsize=(1.15 * n_cols + 1.2, len(rows) * 1.3 + 0.6))
    for r, (kind, (vectors, titles)) in enumerate(rows.items()):
        for c, (vector, label) in enumerate(zip(vectors, titles)):
            ax = axes[r, c]
            image, kws = _to_image(vector, kernel_shape)
            ax.imshow(image, interpolation="nearest", **kws)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            ax.set_title(label, fontsize="x-small", pad=2)
        axes[r, 0].set_ylabel(ROW_LABELS[kind], rotation=0, ha="right", va="center",
                              fontsize="small", labelpad=8)
    c_in, kh, kw = kernel_shape
    shown = {1: "grayscale", 3: "RGB"}.get(c_in, f"channel 1 of {c_in}")
    heading = title or "First-layer filters and eigenvectors of their covariance"
    fig.suptitle(f"{heading}\n({kh}×{kw} kernels, {shown}; mid grey = 0, "
                 "eigenvector sign arbitrary)", fontsize="medium")
    fig.tight_layout()
    style.save_figure(fig, out_path)
