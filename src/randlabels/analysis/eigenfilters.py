"""The eigen-filter table: first-layer filters pooled over seeds beside the top
eigenvectors of their covariance Σw and of the patch covariance Σx.

The paper's first claim, as a picture: single filters look like noise, but the leading
eigenvectors of Σw look like those of Σx. One tidy table per experiment holds what
that picture needs, so the figure (:mod:`randlabels.plots.eigenfilters`) and the paper
target ``fig_eigenfilters`` (:func:`rank_comparison`) are ordinary table readers and
never open a statistics file. Long format, one row per vector element:

    experiment, layer, labels, init_scale, seeds, filters, c_in, kh, kw,
    left_out, collapsed, reason,
    kind (filter | eigvec_w | eigvec_x), column, eigval, element, value

``column`` is the filter's index in the pooled stack, or an eigenvector's rank
(1 = largest eigenvalue); ``eigval`` is empty for filters; ``element`` indexes the
flattened (C_in, k, k) kernel. Readers need pandas alone.

Which seeds are pooled: a diverged run, and one whose filters or Σx are not finite, is
left out and named in ``left_out`` (its weights are no filters anyone trained). A
collapsed run (:mod:`randlabels.analysis.memorization`) stays in, as it stays in every
table, and ``collapsed`` names it so the figure can say so. With no seed left the table
is one row, its vectors empty and ``reason`` saying why, and its readers say "nothing to
pool" instead of failing.
"""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np
import pandas as pd

KINDS = ("filter", "eigvec_w", "eigvec_x")
TOP = 16  # eigen-directions kept of Σw and of Σx
SAMPLE = 8  # filters kept: a fixed-seed sample, drawn in the figure's first row


def _left_out(record: dict, index: int) -> tuple[int, str]:
    """(seed, why it cannot be pooled, or "") of one statistics record."""
    run = record.get("run", {})
    seed = int(run.get("seed", index))
    if run.get("diverged", False):
        return seed, "diverged"
    if not np.isfinite(np.asarray(record["weights"], dtype=float)).all():
        return seed, "non-finite weights"
    if not (np.isfinite(np.asarray(record["eigvec_x"], dtype=float)).all()
            and np.isfinite(np.asarray(record["eigval_x"], dtype=float)).all()):
        return seed, "non-finite Σx"
    return seed, ""


def table(records: Sequence[dict], experiment: str, layer: str, labels: str, init_scale: float,
          top: int = TOP, sample: int = SAMPLE, collapsed: Collection[int] = ()) -> pd.DataFrame:
    """The eigen-filter rows of one experiment from its seeds' statistics records
    (:func:`randlabels.analysis.statsfile.read_layer` of one conv layer at one epoch): Σw of
    the filters of every seed that can be pooled, stacked; Σx of the first of them.
    ``collapsed``: the seeds flagged collapsed (pooled, and named in the table)."""
    from randlabels.analysis.stats import eigh_descending, weight_statistics

    if not records:
        raise ValueError(f"{experiment}: no statistics records to pool")
    kernel = tuple(int(s) for s in records[0]["weight_shape"][1:])
    if len(kernel) != 3:
        raise ValueError(f"{experiment}: layer {layer} has weight shape {tuple(records[0]['weight_shape'])}, "
                         "not a convolution's (out, C_in, k, k)")
    members, seeds, left_out = [], [], []
    for index, record in enumerate(records):
        seed, why = _left_out(record, index)
        if why:
            left_out.append(f"seed {seed}: {why}")
        else:
            members.append(record)
            seeds.append(seed)
    head = {"experiment": experiment, "layer": layer, "labels": labels, "init_scale": float(init_scale),
            "seeds": len(members), "filters": 0, "c_in": kernel[0], "kh": kernel[1], "kw": kernel[2],
            "left_out": "; ".join(left_out),
            "collapsed": "; ".join(f"seed {seed}" for seed in seeds if seed in set(collapsed)),
            "reason": ""}
    if not members:
        head["reason"] = f"no seed left to pool ({head['left_out']})"
        return pd.DataFrame([{**head, "kind": "", "column": np.nan, "eigval": np.nan, "element": np.nan,
                              "value": np.nan}])
    pooled = np.concatenate([np.asarray(r["weights"], dtype=float) for r in members])
    head["filters"] = len(pooled)
    _, cov_w = weight_statistics(pooled)
    eigval_w, eigvec_w = eigh_descending(cov_w)
    eigvec_x = np.asarray(members[0]["eigvec_x"], dtype=float)
    eigval_x = np.asarray(members[0]["eigval_x"], dtype=float)
    n = min(top, eigvec_w.shape[1], eigvec_x.shape[1])
    pick = np.sort(np.random.default_rng(0).choice(len(pooled), min(sample, len(pooled)), replace=False))
    blocks = (
        ("filter", pooled[pick].T, pick, np.full(len(pick), np.nan)),
        ("eigvec_w", eigvec_w[:, :n], np.arange(1, n + 1), eigval_w[:n]),
        ("eigvec_x", eigvec_x[:, :n], np.arange(1, n + 1), eigval_x[:n]),
    )
    d = pooled.shape[1]
    frames = [
        pd.DataFrame({
            "kind": kind,
            "column": np.repeat(columns, d),
            "eigval": np.repeat(eigvals, d),
            "element": np.tile(np.arange(d), len(columns)),
            "value": vectors.T.reshape(-1),
        })
        for kind, vectors, columns, eigvals in blocks
    ]
    out = pd.concat(frames, ignore_index=True)
    return out.assign(**head)[[*head, *out.columns]]


def nothing_pooled(rows: pd.DataFrame) -> str:
    """Why one experiment's rows hold no vectors ("" when they hold them)."""
    if "reason" not in rows.columns:
        return ""
    return next((reason for reason in rows["reason"] if isinstance(reason, str) and reason), "")  # empty: NaN


def vectors(rows: pd.DataFrame, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(matrix with the vectors of ``kind`` as columns (d, n), their ``column`` labels,
    their eigenvalues) from one experiment's rows, in the table's column order."""
    part = rows[rows["kind"] == kind]
    if part.empty:
        raise ValueError(f"eigen-filter table has no {kind!r} rows")
    wide = part.pivot(index="element", columns="column", values="value").sort_index()
    columns = wide.columns.to_numpy()
    eigvals = part.groupby("column")["eigval"].first().reindex(columns).to_numpy(dtype=float)
    return wide.to_numpy(dtype=float), columns, eigvals


def rank_comparison(rows: pd.DataFrame) -> pd.DataFrame:
    """Per experiment, rank by rank: the eigenvalues of Σw and Σx, |cos| between their
    i-th eigenvectors, and the best |cos| of Σw's i-th with any of Σx's kept ones; an
    experiment with nothing pooled is one row of NaN with its ``reason``."""
    frames = []
    for experiment, part in rows.groupby("experiment", sort=False):
        reason = nothing_pooled(part)
        if reason:
            frames.append(pd.DataFrame([{"experiment": experiment, "rank": np.nan, "eigval_w": np.nan,
                                         "eigval_x": np.nan, "cos_same_rank": np.nan, "cos_best_match": np.nan,
                                         "reason": reason}]))
            continue
        eigvec_w, ranks, eigval_w = vectors(part, "eigvec_w")
        eigvec_x, _, eigval_x = vectors(part, "eigvec_x")
        n = min(len(ranks), eigvec_x.shape[1])
        overlap = np.abs(eigvec_w[:, :n].T @ eigvec_x[:, :n])
        frames.append(pd.DataFrame({
            "experiment": experiment,
            "rank": ranks[:n].astype(int),
            "eigval_w": eigval_w[:n],
            "eigval_x": eigval_x[:n],
            "cos_same_rank": np.diag(overlap),
            "cos_best_match": overlap.max(axis=1),
            "reason": "",
        }))
    return pd.concat(frames, ignore_index=True)
