"""Closed-form checks of the learning-curve summaries behind the transfer claims."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from randlabels.analysis.summary import (SUMMARY_COLUMNS, area_under_curve, chance_accuracy,
                                describe_target, mean_and_ci, resolve_target,
                                steps_to_target, task_target, transfer_summary)


def curve(steps, acc) -> pd.DataFrame:
    return pd.DataFrame({"step": steps, "train_acc": acc})


def step_curve(reach_at: int | None, variant: str, seed: int = 0, *, experiment: str = "vgg",
               init_scale: float = 1.0, diverged_from: int | None = None) -> pd.DataFrame:
    """Accuracy 0.1 until ``reach_at``, then 0.9; logged every 10 steps over 0..200."""
    steps = np.arange(0, 201, 10)
    acc = np.full(steps.size, 0.1)
    if reach_at is not None:
        acc[steps >= reach_at] = 0.9
    diverged = steps >= diverged_from if diverged_from is not None else np.zeros(steps.size, bool)
    return pd.DataFrame({"experiment": experiment, "variant": variant, "init_scale": init_scale,
                         "seed": seed, "step": steps, "train_acc": acc,
                         "test_acc": acc - 0.05, "loss": np.where(diverged, np.nan, 1.0),
                         "diverged": diverged})


# ------------------------------------------------------------------ steps_to_target


def test_steps_to_target_first_crossing() -> None:
    c = curve([0, 10, 20, 30, 40], [0.1, 0.5, 0.8, 0.7, 0.9])
    assert steps_to_target(c, 0.8) == 20
    assert steps_to_target(c, 0.5) == 10  # >= counts
    assert steps_to_target(c, 0.0) == 0


def test_steps_to_target_never_reached_is_nan() -> None:
    assert math.isnan(steps_to_target(curve([0, 10], [0.1, 0.2]), 0.5))
    assert math.isnan(steps_to_target(curve([0, 10], [np.nan, np.nan]), 0.5))


def test_steps_to_target_unsorted_input() -> None:
    c = curve([30, 0, 20, 10], [0.95, 0.1, 0.9, 0.3])
    assert steps_to_target(c, 0.9) == 20


# ------------------------------------------------------------------ area_under_curve


def test_auc_constant_curve_is_its_value() -> None:
    assert area_under_curve(curve([0, 5, 100], [0.4, 0.4, 0.4])) == pytest.approx(0.4)


def test_auc_linear_ramp_is_half() -> None:
    steps = np.linspace(0, 1000, 11)
    assert area_under_curve(curve(steps, steps / 1000)) == pytest.approx(0.5)
    # Order of rows does not matter.
    assert area_under_curve(curve(steps[::-1], steps[::-1] / 1000)) == pytest.approx(0.5)


def test_auc_uneven_steps_and_edge_cases() -> None:
    # 0 -> 1 over [0, 10], then flat at 1 over [10, 40]: (5 + 30) / 40.
    assert area_under_curve(curve([0, 10, 40], [0.0, 1.0, 1.0])) == pytest.approx(35 / 40)
    assert area_under_curve(curve([7], [0.3])) == pytest.approx(0.3)
    assert math.isnan(area_under_curve(curve([0, 10], [0.2, np.nan])))


# ------------------------------------------------------------------ transfer_summary


def test_speedup_two_and_auc_gap_sign() -> None:
    curves = pd.concat([step_curve(100, "scratch"), step_curve(50, "pretrained")])
    out = transfer_summary(curves, target=0.8).set_index("variant")
    assert list(transfer_summary(curves, target=0.8).columns) == SUMMARY_COLUMNS
    assert out.loc["scratch", "steps_to_target"] == 100
    assert out.loc["pretrained", "steps_to_target"] == 50
    assert out.loc["pretrained", "speedup"] == pytest.approx(2.0)
    assert out.loc["scratch", "speedup"] == pytest.approx(1.0)
    assert out.loc["pretrained", "auc_gap"] > 0
    assert out.loc["scratch", "auc_gap"] == 0
    # Reached at 50 of 200 vs 100 of 200: the mean accuracy differs by 0.8 * 50/200 = 0.2.
    assert out.loc["pretrained", "auc_gap"] == pytest.approx(0.8 * 50 / 200, abs=0.05)
    assert out["reached"].all() and not out["diverged"].any()


def test_negative_transfer_has_speedup_below_one() -> None:
    curves = pd.concat([step_curve(50, "scratch"), step_curve(100, "gaussian")])
    out = transfer_summary(curves, target=0.8).set_index("variant")
    assert out.loc["gaussian", "speedup"] == pytest.approx(0.5)
    assert out.loc["gaussian", "auc_gap"] < 0


def test_pairs_by_experiment_scale_and_seed() -> None:
    curves = pd.concat([
        step_curve(100, "scratch", seed=0), step_curve(50, "pretrained", seed=0),
        step_curve(150, "scratch", seed=1), step_curve(50, "pretrained", seed=1),
        step_curve(40, "scratch", seed=0, init_scale=0.5),
        step_curve(80, "pretrained", seed=0, init_scale=0.5),
    ])
    out = transfer_summary(curves, target=0.5)
    pre = out[out["variant"] == "pretrained"].set_index(["init_scale", "seed"])["speedup"]
    assert pre.loc[(1.0, 0)] == pytest.approx(2.0)
    assert pre.loc[(1.0, 1)] == pytest.approx(3.0)
    assert pre.loc[(0.5, 0)] == pytest.approx(0.5)
    assert len(out) == 6


def test_variant_never_reaching_target() -> None:
    curves = pd.concat([step_curve(100, "scratch"), step_curve(None, "pretrained")])
    out = transfer_summary(curves, target=0.8).set_index("variant")
    assert not out.loc["pretrained", "reached"]
    assert math.isnan(out.loc["pretrained", "steps_to_target"])
    assert math.isnan(out.loc["pretrained", "speedup"])
    assert out.loc["pretrained", "auc_gap"] < 0  # still defined: the curve exists


def test_baseline_never_reaching_target_gives_nan_speedup() -> None:
    curves = pd.concat([step_curve(None, "scratch"), step_curve(50, "pretrained")])
    out = transfer_summary(curves, target=0.8).set_index("variant")
    assert out.loc["pretrained", "reached"]
    assert math.isnan(out.loc["pretrained", "speedup"])


def test_missing_baseline_raises_and_names_the_run() -> None:
    curves = pd.concat([step_curve(100, "scratch", seed=0), step_curve(50, "pretrained", seed=0),
                        step_curve(50, "pretrained", seed=7)])
    with pytest.raises(ValueError, match=r"experiment='vgg'.*init_scale=1.0.*seed=7"):
        transfer_summary(curves, target=0.8)
    with pytest.raises(ValueError, match="'random_init'"):
        transfer_summary(curves[curves["seed"] == 0], target=0.8, baseline="random_init")


def test_diverged_run_keeps_row_with_nan_metrics() -> None:
    curves = pd.concat([step_curve(100, "scratch"), step_curve(50, "pretrained"),
                        step_curve(50, "gaussian", diverged_from=120)])
    out = transfer_summary(curves, target=0.8).set_index("variant")
    assert len(out) == 3
    assert out.loc["gaussian", "diverged"]
    assert not out.loc["gaussian", "reached"]
    for column in ("steps_to_target", "auc", "speedup", "auc_gap"):
        assert math.isnan(out.loc["gaussian", column])
    assert out.loc["pretrained", "speedup"] == pytest.approx(2.0)


def test_diverged_baseline_makes_comparisons_nan() -> None:
    curves = pd.concat([step_curve(100, "scratch", diverged_from=150),
                        step_curve(50, "pretrained")])
    out = transfer_summary(curves, target=0.8).set_index("variant")
    assert out.loc["scratch", "diverged"]
    assert math.isnan(out.loc["pretrained", "speedup"])
    assert math.isnan(out.loc["pretrained", "auc_gap"])
    assert out.loc["pretrained", "auc"] > 0


def test_diverged_flag_read_back_as_text() -> None:
    curves = pd.concat([step_curve(100, "scratch"), step_curve(50, "pretrained",
                                                                diverged_from=150)])
    curves["diverged"] = curves["diverged"].map({True: "True", False: "False"})
    out = transfer_summary(curves, target=0.8).set_index("variant")
    assert out.loc["pretrained", "diverged"] and not out.loc["scratch", "diverged"]


# ------------------------------------------------------------------ targets relative to chance


@pytest.mark.parametrize("classes, expected", [(2, 0.75), (10, 0.55), (100, 0.505), (1, 1.0)])
def test_target_half_way_from_chance_closed_form(classes, expected) -> None:
    # 1/C + 0.5·(1 − 1/C): 0.5 + 0.25, 0.1 + 0.45, 0.01 + 0.495.
    assert resolve_target({"from_chance": 0.5}, classes) == pytest.approx(expected, abs=1e-15)


def test_target_from_chance_ends_and_absolute_form() -> None:
    assert chance_accuracy(4) == 0.25
    assert resolve_target({"from_chance": 1.0}, 7) == pytest.approx(1.0)
    assert resolve_target({"from_chance": 0.2}, 10) == pytest.approx(0.28)
    assert resolve_target({"from_chance": 0.2}, 2) == pytest.approx(0.6)
    # Absolute: the same number whatever the class count, none needed.
    assert resolve_target(0.9) == 0.9 and resolve_target(0.3, 2) == 0.3
    assert task_target(0.3, "random100") == 0.3 and task_target(0.3, "default") == 0.3
    assert task_target({"from_chance": 0.5}, "random2") == pytest.approx(0.75)
    assert task_target({"from_chance": 0.5}, "real", real_classes=100) == pytest.approx(0.505)
    assert describe_target(0.9) == "90 %"
    assert describe_target({"from_chance": 0.5}) == "50 % of the way from chance (1/C) to 100 %"


@pytest.mark.parametrize("target, match", [
    ({"from_chance": 0}, r"\(0, 1\]"),
    ({"from_chance": 1.5}, r"\(0, 1\]"),
    ({"from_chance": 0.5, "accuracy": 0.9}, "from_chance"),
    ({}, "from_chance"),
    ("0.9", "accuracy"),
])
def test_malformed_targets_are_refused(target, match) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_target(target, 10)


def test_relative_target_needs_the_number_of_classes() -> None:
    with pytest.raises(ValueError, match="number of classes"):
        resolve_target({"from_chance": 0.5})
    with pytest.raises(ValueError, match=r"task 'real'.*real_classes"):
        task_target({"from_chance": 0.5}, "real")
    with pytest.raises(ValueError, match="task 'default'"):
        task_target({"from_chance": 0.5}, "default")


def _task_curves(task: str, reach_scratch: int, reach_pre: int, low: float, high: float) -> pd.DataFrame:
    """Scratch and pretrained on one task: accuracy ``low`` until the reach step, then ``high``."""
    frames = []
    for variant, reach in (("scratch", reach_scratch), ("pretrained", reach_pre)):
        frame = step_curve(reach, variant)
        frame["train_acc"] = np.where(frame["step"] >= reach, high, low)
        frames.append(frame.assign(task=task))
    return pd.concat(frames, ignore_index=True)


def test_transfer_summary_resolves_the_target_per_task() -> None:
    # Accuracy from chance up to 0.8 (2 classes), 0.6 (10 classes), 0.52 (100 classes, and real
    # labels of a 100-class dataset): f = 0.5 gives 0.75, 0.55, 0.505, 0.505, all reached.
    curves = pd.concat([
        _task_curves("random2", 100, 50, 0.5, 0.8),
        _task_curves("random10", 120, 40, 0.1, 0.6),
        _task_curves("random100", 90, 30, 0.01, 0.52),
        _task_curves("real", 80, 40, 0.01, 0.52),
    ])
    out = transfer_summary(curves, target={"from_chance": 0.5}, real_classes=100)
    assert list(out.columns) == SUMMARY_COLUMNS
    targets = out.groupby("task")["target"].unique()
    assert {task: list(v) for task, v in targets.items()} == {
        "random2": [pytest.approx(0.75)], "random10": [pytest.approx(0.55)],
        "random100": [pytest.approx(0.505)], "real": [pytest.approx(0.505)],
    }
    speed = out[out["variant"] == "pretrained"].set_index("task")["speedup"]
    assert speed.to_dict() == {"random10": pytest.approx(3.0), "random100": pytest.approx(3.0),
                               "random2": pytest.approx(2.0), "real": pytest.approx(2.0)}
    # The same curves at one absolute target: 0.3 is below the chance level of 2 classes
    # (reached at step 0 by both runs: 0 / 0), 0.65 out of reach for 10 and 100 classes.
    low = transfer_summary(curves, target=0.3).set_index(["task", "variant"])
    assert low.loc[("random2", "scratch"), "steps_to_target"] == 0
    assert math.isnan(low.loc[("random2", "pretrained"), "speedup"])
    assert (low["target"] == 0.3).all()
    high = transfer_summary(curves, target=0.65).set_index(["task", "variant"])
    assert math.isnan(high.loc[("random10", "pretrained"), "speedup"])
    with pytest.raises(ValueError, match="real_classes"):
        transfer_summary(curves, target={"from_chance": 0.5})


# ------------------------------------------------------------------ mean_and_ci


def test_mean_and_ci_known_numbers() -> None:
    frame = pd.DataFrame({"variant": ["a"] * 4 + ["b"], "value": [1.0, 2.0, 3.0, 4.0, 7.0]})
    out = mean_and_ci(frame, ["variant"], "value").set_index("variant")
    assert list(out.reset_index().columns) == ["variant", "mean", "ci_low", "ci_high", "n"]
    half = stats.t.ppf(0.975, 3) * np.std([1, 2, 3, 4], ddof=1) / 2  # 3.182 * 1.291 / 2
    assert half == pytest.approx(2.054, abs=1e-3)
    assert out.loc["a", "mean"] == pytest.approx(2.5)
    assert out.loc["a", "ci_low"] == pytest.approx(2.5 - half)
    assert out.loc["a", "ci_high"] == pytest.approx(2.5 + half)
    assert out.loc["a", "n"] == 4
    # n = 1: interval collapses onto the mean.
    assert out.loc["b", ["mean", "ci_low", "ci_high"]].tolist() == [7.0, 7.0, 7.0]
    assert out.loc["b", "n"] == 1


def test_mean_and_ci_skips_nan_and_keeps_empty_groups() -> None:
    frame = pd.DataFrame({"v": ["x", "x", "x", "y"], "s": [1.0, 1.0, 1.0, 1.0],
                          "value": [2.0, np.nan, 4.0, np.inf]})
    out = mean_and_ci(frame, ["v", "s"], "value").set_index("v")
    assert out.loc["x", "n"] == 2 and out.loc["x", "mean"] == pytest.approx(3.0)
    half = stats.t.ppf(0.975, 1) * np.std([2, 4], ddof=1) / np.sqrt(2)
    assert out.loc["x", "ci_high"] == pytest.approx(3.0 + half)
    assert out.loc["y", "n"] == 0 and math.isnan(out.loc["y", "mean"])


def test_one_side_reached_pairs_each_run_with_its_baseline() -> None:
    """Closed form over four pairs and one unpaired run: only the baseline reached,
    only the variant, both, a diverged variant beside a baseline that reached (no
    flag: it failed, it was not slower), and a variant with no baseline partner."""
    from randlabels.analysis.summary import one_side_reached

    rows = []
    for seed, (variant_reached, base_reached, diverged) in enumerate(
            [(False, True, False), (True, False, False), (True, True, False), (False, True, True)]):
        rows.append(dict(experiment="e", task="random2", init_scale=1.0, variant="pretrained", seed=seed,
                         reached=variant_reached, diverged=diverged))
        rows.append(dict(experiment="e", task="random2", init_scale=1.0, variant="scratch", seed=seed,
                         reached=base_reached, diverged=False))
    rows.append(dict(experiment="e", task="random2", init_scale=2.0, variant="pretrained", seed=0,
                     reached=False, diverged=False))
    table = pd.DataFrame(rows)
    only_base, only_variant = one_side_reached(table)
    pretrained = table["variant"] == "pretrained"
    assert only_base[pretrained].tolist() == [True, False, False, False, False]
    assert only_variant[pretrained].tolist() == [False, True, False, False, False]
    assert not only_base[~pretrained].any() and not only_variant[~pretrained].any()
    # After a TSV round trip the flags are strings; without `reached` nothing is flagged.
    text = table.assign(reached=table["reached"].map(str), diverged=table["diverged"].map(str))
    assert one_side_reached(text)[0].tolist() == only_base.tolist()
    assert not any(flags.any() for flags in one_side_reached(table.drop(columns="reached")))
    # Another baseline: the pairs are made with it.
    assert not one_side_reached(table, baseline="gaussian")[0].any()
    # A damaged flag is an error that names its column, whichever column it is in.
    for column in ("reached", "diverged"):
        damaged = text.copy()
        damaged.loc[0, column] = "maybe"
        with pytest.raises(ValueError, match=rf"^{column}: cannot read 'maybe'"):
            one_side_reached(damaged)
