"""Summaries of downstream learning curves: how much faster does a variant train?

The paper's claim 2 is about *speed*: a network pre-trained on random labels reaches
a given downstream accuracy in fewer steps than one trained from scratch. This module
turns the tidy fine-tuning curves table into per-run numbers that test the claim:

* ``steps_to_target`` -- first step at which training accuracy reaches a target;
* ``resolve_target`` -- the absolute accuracy a target stands for on a task of C
  classes (a target may be given as a fraction of the way from chance, 1/C, to 1);
* ``area_under_curve`` -- mean training accuracy over the run (insensitive to the
  arbitrary choice of target);
* ``transfer_summary`` -- both of the above for every run, plus the ratio and gap
  against the from-scratch baseline of the same experiment, init scale and seed;
* ``one_side_reached`` -- of the runs without a speed-up, those where only one side
  of the pair reached the target (the figures name them);
* ``mean_and_ci`` -- mean and 95 % Student-t confidence interval over seeds.

Everything here is plain pandas/numpy so that tables and figures can be rebuilt
without torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from randlabels.inits import variants

#: Columns that identify one downstream training run in the curves table.
RUN_KEYS: list[str] = ["experiment", "task", "init_scale", "variant", "seed"]
#: Columns that pair a variant run with its baseline run.
PAIR_KEYS: list[str] = ["experiment", "task", "init_scale", "seed"]
#: The task of curves written before downstream tasks existed (one per experiment).
DEFAULT_TASK = "default"

#: The key of a target given relative to chance: ``{"from_chance": f}``.
FROM_CHANCE = "from_chance"
#: A random-label task's name (plan.TASK_PATTERN): ``random{C}``.
_RANDOM_TASK = re.compile(r"random(\d+)")

SUMMARY_COLUMNS: list[str] = [
    *RUN_KEYS,
    "target",
    "diverged",
    "reached",
    "steps_to_target",
    "auc",
    "speedup",
    "auc_gap",
]


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Fail early with the missing column names rather than with a KeyError later."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; have {list(frame.columns)}")


def _as_bool(column: pd.Series) -> pd.Series:
    """Coerce a flag column (``diverged``, ``reached``) to bool, accepting the strings
    a TSV round trip may give.

    ``astype(bool)`` alone would turn the string ``"False"`` into True. An unreadable
    value is an error that names the column it is in.
    """
    if column.dtype == bool:
        return column
    words = {"true": True, "1": True, "false": False, "0": False, "": False, "nan": False}

    def convert(value: object) -> bool:
        if isinstance(value, str):
            if value.strip().lower() not in words:
                raise ValueError(f"{column.name}: cannot read {value!r} as a boolean")
            return words[value.strip().lower()]
        return bool(value) if pd.notna(value) else False

    return column.map(convert).astype(bool)


def steps_to_target(curve: pd.DataFrame, target: float) -> float:
    """First ``step`` at which ``train_acc >= target``; NaN if the run never gets there.

    The curve is sorted by step first, so row order in the table does not matter.
    NaN accuracies never count as reaching the target.
    """
    _require(curve, ["step", "train_acc"], "steps_to_target")
    ordered = curve.sort_values("step", kind="stable")
    hit = ordered["train_acc"].to_numpy(dtype=float) >= target
    if not hit.any():
        return float("nan")
    return float(ordered["step"].to_numpy()[np.argmax(hit)])


def area_under_curve(curve: pd.DataFrame) -> float:
    """Trapezoid area of ``train_acc`` over ``step`` divided by the step range.

    Normalising by the range makes this the time-averaged accuracy in [0, 1], so runs
    logged over different numbers of steps stay comparable. A single-point curve
    returns its accuracy; any NaN accuracy returns NaN (a gap is not silently bridged).
    """
    _require(curve, ["step", "train_acc"], "area_under_curve")
    ordered = curve.sort_values("step", kind="stable")
    steps = ordered["step"].to_numpy(dtype=float)
    acc = ordered["train_acc"].to_numpy(dtype=float)
    if acc.size == 0 or np.isnan(acc).any():
        return float("nan")
    span = steps[-1] - steps[0]
    if acc.size == 1 or span == 0:
        return float(acc.mean())
    area = float(np.sum(0.5 * (acc[1:] + acc[:-1]) * np.diff(steps)))
    return area / span


def is_relative(target) -> bool:
    """Whether ``target`` is given relative to chance (``{"from_chance": f}``)."""
    return isinstance(target, Mapping)


def _fraction(target) -> float:
    """The f of ``{"from_chance": f}``, checked: a finite number in (0, 1]."""
    if set(target) != {FROM_CHANCE}:
        raise ValueError(f"a target relative to chance is {{{FROM_CHANCE!r}: f}}, got {dict(target)!r}")
    fraction = target[FROM_CHANCE]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"target {FROM_CHANCE}: f must be a number in (0, 1], got {fraction!r}")
    return float(fraction)


def chance_accuracy(classes: int) -> float:
    """Accuracy of guessing among ``classes`` balanced classes: 1/C."""
    if isinstance(classes, bool) or int(classes) != classes or classes < 1:
        raise ValueError(f"the number of classes must be a positive integer, got {classes!r}")
    return 1.0 / int(classes)


def resolve_target(target, classes: int | None = None) -> float:
    """The absolute training accuracy that ``target`` stands for on a task of ``classes``.

    ``target`` is either a number, an absolute accuracy (the same for every task;
    returned as a float, ``classes`` is not needed), or ``{"from_chance": f}``: the
    fraction f of the way from chance to perfect accuracy,

        target = 1/C + f · (1 − 1/C),

    so f = 0.5 gives 0.75 for C = 2, 0.55 for C = 10 and 0.505 for C = 100. An absolute
    target below 1/C is reached by guessing (and at step 0); one of 0.6 is out of reach
    on random labels of many classes: the relative form keeps every class count
    comparable.
    """
    if not is_relative(target):
        if isinstance(target, bool) or not isinstance(target, (int, float, np.number)):
            raise ValueError(f"a target is an accuracy or {{{FROM_CHANCE!r}: f}}, got {target!r}")
        return float(target)
    fraction = _fraction(target)
    if classes is None:
        raise ValueError(f"target {dict(target)} is relative to chance and needs the task's number of classes")
    chance = chance_accuracy(classes)
    return chance + fraction * (1.0 - chance)


def describe_target(target) -> str:
    """The target in words, for figure titles and logs: '90 %' or '50 % of the way
    from chance (1/C) to 100 %'."""
    if is_relative(target):
        return f"{100 * _fraction(target):.3g} % of the way from chance (1/C) to 100 %"
    return f"{100 * float(target):.3g} %"


def task_classes(task: str, real_classes: int | None = None) -> int | None:
    """Classes of a downstream task: C of ``random{C}``, ``real_classes`` for ``real``
    (the dataset's number of classes), None for any other name."""
    if task == "real":
        return real_classes
    match = _RANDOM_TASK.fullmatch(str(task))
    return int(match.group(1)) if match else None


def task_target(target, task: str, real_classes: int | None = None) -> float:
    """:func:`resolve_target` of ``target`` for the downstream task named ``task``."""
    if not is_relative(target):
        return resolve_target(target)
    classes = task_classes(task, real_classes)
    if classes is None:
        hint = (" (give real_classes, the dataset's number of classes)" if task == "real"
                else " (only 'real' and 'random{C}' tasks have a known number of classes)")
        raise ValueError(
            f"target {dict(target)} is relative to chance, but the number of classes of "
            f"task {task!r} is unknown{hint}"
        )
    return resolve_target(target, classes)


def transfer_summary(curves: pd.DataFrame, target,
                     baseline: str = variants.SCRATCH, real_classes: int | None = None) -> pd.DataFrame:
    """One row per run (experiment, task, init_scale, variant, seed) with transfer metrics.

    ``target`` is an absolute accuracy or ``{"from_chance": f}`` (:func:`resolve_target`),
    resolved per downstream task from its number of classes: C of a ``random{C}``
    task, ``real_classes`` (the dataset's) for ``real``.

    Columns: the run keys, ``target`` (the absolute accuracy of the run's task),
    ``diverged`` (any step flagged), ``reached`` (the run's accuracy got to
    ``target``), ``steps_to_target``, ``auc``, and against
    the ``baseline`` run of the same experiment, downstream task, init scale and seed:

    * ``speedup`` = steps_to_target(baseline) / steps_to_target(variant); > 1 means
      positive transfer. NaN when either run did not reach the target or diverged.
    * ``auc_gap`` = auc(variant) - auc(baseline); > 0 means positive transfer.

    Diverged runs keep their row (diverged True, metrics NaN) so that they are counted,
    not silently lost. A run without a matching baseline raises ``ValueError``.
    """
    frame = curves.copy()
    if "task" not in frame.columns:
        frame["task"] = DEFAULT_TASK
    _require(frame, [*RUN_KEYS, "step", "train_acc", "diverged"], "transfer_summary")
    frame["diverged"] = _as_bool(frame["diverged"])

    rows = []
    for key, run in frame.groupby(RUN_KEYS, sort=True, dropna=False):
        run_target = task_target(target, dict(zip(RUN_KEYS, key))["task"], real_classes)
        diverged = bool(run["diverged"].any())
        steps = float("nan") if diverged else steps_to_target(run, run_target)
        auc = float("nan") if diverged else area_under_curve(run)
        rows.append({**dict(zip(RUN_KEYS, key)), "target": run_target, "diverged": diverged,
                     "reached": bool(np.isfinite(steps)), "steps_to_target": steps, "auc": auc})
    table = pd.DataFrame(rows, columns=[*RUN_KEYS, "target", "diverged", "reached",
                                        "steps_to_target", "auc"])

    base = table.loc[table["variant"] == baseline, [*PAIR_KEYS, "steps_to_target", "auc"]]
    base = base.rename(columns={"steps_to_target": "_base_steps", "auc": "_base_auc"})
    merged = table.merge(base, on=PAIR_KEYS, how="left", indicator=True)
    orphans = merged.loc[merged["_merge"] == "left_only", PAIR_KEYS].drop_duplicates()
    if not orphans.empty:
        where = "; ".join(f"experiment={r.experiment!r} task={r.task!r} init_scale={r.init_scale} seed={r.seed}"
                          for r in orphans.itertuples(index=False))
        raise ValueError(f"transfer_summary: no {baseline!r} baseline run for {where}")

    # NaN propagates through both operations, which is exactly the intended semantics.
    merged["speedup"] = merged["_base_steps"] / merged["steps_to_target"]
    merged["auc_gap"] = merged["auc"] - merged["_base_auc"]
    return merged[SUMMARY_COLUMNS].reset_index(drop=True)


def one_side_reached(summary: pd.DataFrame, baseline: str = variants.SCRATCH) -> tuple[pd.Series, pd.Series]:
    """Per row of a transfer summary: whether only its ``baseline`` partner (same
    :data:`PAIR_KEYS`) reached the target, and whether only the row's own run did.

    Both leave the speed-up undefined (NaN), but they are no missing values: the first
    is negative transfer (the variant is slower than any speed-up could say), the
    second positive. A diverged run reached nothing; neither flag is set for the
    baseline's own rows. All False where the table has no ``reached`` column (tables
    written by hand)."""
    none = pd.Series(False, index=summary.index)
    if "reached" not in summary.columns:
        return none, none.copy()
    ran = ~_as_bool(summary["diverged"]) if "diverged" in summary.columns else ~none
    reached = _as_bool(summary["reached"]) & ran
    is_base = summary["variant"].astype(str) == baseline
    partner = summary.loc[is_base, PAIR_KEYS].assign(_base_reached=reached[is_base].to_numpy())
    merged = summary[PAIR_KEYS].merge(partner.drop_duplicates(PAIR_KEYS), on=PAIR_KEYS, how="left")
    paired = merged["_base_reached"].notna().to_numpy() & ~is_base.to_numpy()
    base_reached = merged["_base_reached"].fillna(False).astype(bool).to_numpy()
    own = reached.to_numpy()
    return (pd.Series(paired & ran.to_numpy() & ~own & base_reached, index=summary.index),
            pd.Series(paired & own & ~base_reached, index=summary.index))


def mean_and_ci(frame: pd.DataFrame, by: list[str], value: str,
                level: float = 0.95) -> pd.DataFrame:
    """Mean of ``value`` per group with a two-sided Student-t confidence interval.

    The interval is mean +/- t_{(1+level)/2, n-1} * s / sqrt(n) with s the sample
    standard deviation: with 3-5 seeds the normal approximation would be far too
    narrow. Non-finite values (NaN, inf) are left out and ``n`` counts only the finite
    ones; n = 1 gives an interval equal to the mean (no spread can be estimated), and
    a group with n = 0 keeps its row with NaN mean so that it stays visible.
    """
    from scipy import stats  # here: the Snakefile imports this module (via targets), scipy.stats takes 0.5 s

    _require(frame, [*by, value], "mean_and_ci")
    columns = [*by, "mean", "ci_low", "ci_high", "n"]
    rows = []
    for key, group in frame.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        vals = group[value].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals)]
        n = int(vals.size)
        if n == 0:
            mean = low = high = float("nan")
        elif n == 1:
            mean = low = high = float(vals[0])
        else:
            mean = float(vals.mean())
            half = float(stats.t.ppf(0.5 + level / 2, df=n - 1) * vals.std(ddof=1) / np.sqrt(n))
            low, high = mean - half, mean + half
        rows.append({**dict(zip(by, key)), "mean": mean, "ci_low": low, "ci_high": high, "n": n})
    return pd.DataFrame(rows, columns=columns)
