"""The eigen-filter table: first-layer filters pooled over seeds beside the top
eigenvectors of their covariance Σw and of the patch covariance Σx.

The paper's first claim, as a picture: single filters look like noise, but the leading
eigenvectors of Σw look like those of Σx. One tidy table per experiment holds what
that picture needs, so the figure (:mod:`randlabels.plots.eigenfilters`) and the paper
target ``fig_eigenfilters`` (:func:`rank_comparison`) are ordinary table readers and
never open a statistics file. Long format, one row per vector element:

    experiment, layer, labels, init_scale, seeds, filters, c_in, kh, kw,
    left_out, collapsed, reason,
    kind (filter | eigvec_w | eigvec_change | eigvec_x), column, eigval, element, value

``column`` is the filter's index in the pooled stack, or an eigenvector's rank
(1 = largest eigenvalue); ``eigval`` is empty for filters; ``element`` indexes the
flattened (C_in, k, k) kernel. Readers need pandas alone.

``eigvec_change`` holds the eigenvectors of the covariance of what training changed,
the pooled W − W₀ (given the seeds' filters at initialization). Σw itself is the
initialization's isotropic covariance plus the learned part; where the weights moved
little from a large initialization (Fashion-MNIST at init scale 1: 18 % of their
norm), the sampling noise of the initial filters hides the learned part's directions
in Σw's eigenvectors, and Σ(W − W₀) shows them.

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

KINDS = ("filter", "eigvec_w", "eigvec_change", "eigvec_x")  # eigvec_change: given W₀
TOP = 16  # eigen-directions kept of each covariance (Σw, Σ(W − W₀), Σx)
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
          top: int = TOP, sample: int = SAMPLE, collapsed: Collection[int] = (),
          initial: Sequence[dict] | None = None) -> pd.DataFrame:
    """The eigen-filter rows of one experiment from its seeds' statistics records
    (:func:`randlabels.analysis.statsfile.read_layer` of one conv layer at one epoch): Σw of
    the filters of every seed that can be pooled, stacked; Σx of the first of them.
    ``collapsed``: the seeds flagged collapsed (pooled, and named in the table).
    ``initial``: the same seeds' records at initialization (epoch 0), in the same order;
    with them the table holds Σ(W − W₀)'s eigenvectors too (none if nothing moved)."""
    from randlabels.analysis.stats import eigh_descending, weight_statistics

    if not records:
        raise ValueError(f"{experiment}: no statistics records to pool")
    kernel = tuple(int(s) for s in records[0]["weight_shape"][1:])
    if len(kernel) != 3:
        raise ValueError(f"{experiment}: layer {layer} has weight shape {tuple(records[0]['weight_shape'])}, "
                         "not a convolution's (out, C_in, k, k)")
    if initial is not None and len(initial) != len(records):
        raise ValueError(f"{experiment}: {len(initial)} records at initialization for {len(records)} seeds")
    members, starts, seeds, left_out = [], [], [], []
    for index, record in enumerate(records):
        seed, why = _left_out(record, index)
        if why:
            left_out.append(f"seed {seed}: {why}")
        else:
            members.append(record)
            starts.append(None if initial is None else initial[index])
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
    ranks = np.arange(1, n + 1)
    blocks = [
        ("filter", pooled[pick].T, pick, np.full(len(pick), np.nan)),
        ("eigvec_w", eigvec_w[:, :n], ranks, eigval_w[:n]),
    ]
    change = _pooled_change(members, starts, pooled) if initial is not None else None
    if change is not None:
        eigval_c, eigvec_c = eigh_descending(weight_statistics(change)[1])
        blocks.append(("eigvec_change", eigvec_c[:, :n], ranks, eigval_c[:n]))
    blocks.append(("eigvec_x", eigvec_x[:, :n], ranks, eigval_x[:n]))
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


def _pooled_change(members: Sequence[dict], starts: Sequence[dict], pooled: np.ndarray) -> np.ndarray | None:
    """W − W₀ of the pooled filters (same stacking order), or None where the change has
    no spread (nothing trained, or every filter moved alike): its covariance is 0 and
    its eigenvectors would be arbitrary."""
    start = np.concatenate([np.asarray(r["weights"], dtype=float) for r in starts])
    if start.shape != pooled.shape:
        raise ValueError(f"filters at initialization have shape {start.shape}, trained ones {pooled.shape}")
    change = pooled - start
    return change if np.abs(change - change.mean(axis=0)).max() > 0 else None


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


def chance_best_match(d: int, n: int, samples: int = 4000) -> float:
    """The mean best |cos| of a uniformly random unit vector in d dimensions with any of
    n orthonormal vectors: what ``cos_best_match`` is for eigenvectors that know nothing
    of Σx. By symmetry it is E[max of n of |u|'s coordinates]; estimated from
    ``samples`` fixed-seed draws (standard error about 0.002 at the default)."""
    if not 1 <= n <= d:
        raise ValueError(f"chance_best_match: need 1 <= n <= d, got n={n}, d={d}")
    u = np.random.default_rng(0).standard_normal((samples, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return float(np.abs(u[:, :n]).max(axis=1).mean())


COMPARISON = ("experiment", "rank", "eigval_w", "eigval_x", "cos_same_rank", "cos_best_match",
              "eigval_change", "cos_same_rank_change", "cos_best_match_change", "cos_best_match_chance", "reason")


def rank_comparison(rows: pd.DataFrame) -> pd.DataFrame:
    """Per experiment, rank by rank: the eigenvalues of Σw and Σx, |cos| between their
    i-th eigenvectors, and the best |cos| of Σw's i-th with any of Σx's kept ones; the
    same for Σ(W − W₀) (``*_change``, NaN where the table has none), and the best |cos|
    a random direction would reach (``cos_best_match_chance``). An experiment with
    nothing pooled is one row of NaN with its ``reason``."""
    frames = []
    for experiment, part in rows.groupby("experiment", sort=False):
        reason = nothing_pooled(part)
        if reason:
            frames.append(pd.DataFrame([{**dict.fromkeys(COMPARISON, np.nan), "experiment": experiment,
                                         "reason": reason}]))
            continue
        eigvec_x, _, eigval_x = vectors(part, "eigvec_x")
        eigvec_w, ranks, eigval_w = vectors(part, "eigvec_w")
        n = min(len(ranks), eigvec_x.shape[1])
        frame = {"experiment": experiment, "rank": ranks[:n].astype(int), "eigval_w": eigval_w[:n],
                 "eigval_x": eigval_x[:n], **_overlaps(eigvec_w[:, :n], eigvec_x[:, :n], "")}
        if (part["kind"] == "eigvec_change").any():
            eigvec_c, _, eigval_c = vectors(part, "eigvec_change")
            frame.update(eigval_change=eigval_c[:n], **_overlaps(eigvec_c[:, :n], eigvec_x[:, :n], "_change"))
        frame["cos_best_match_chance"] = chance_best_match(eigvec_x.shape[0], n)
        frames.append(pd.DataFrame({**dict.fromkeys(COMPARISON, np.nan), **frame, "reason": ""}))
    return pd.concat(frames, ignore_index=True)[list(COMPARISON)]


def _overlaps(eigvec: np.ndarray, eigvec_x: np.ndarray, suffix: str) -> dict[str, np.ndarray]:
    """|cos| of each eigenvector with Σx's of the same rank, and its best with any."""
    overlap = np.abs(eigvec.T @ eigvec_x)
    return {f"cos_same_rank{suffix}": np.diag(overlap), f"cos_best_match{suffix}": overlap.max(axis=1)}
