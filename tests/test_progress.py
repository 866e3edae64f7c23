"""What a training job shows while it runs: epoch lines, the live file, TensorBoard."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pandas as pd
import pytest

from randlabels.models.networks import build_model, initialize
from randlabels.training.engine import DeviceData, TrainConfig, Trainer
from randlabels.training.packed import PackedTrainer
from randlabels.training.progress import Monitor, eta, job_monitor
from randlabels.training.resume import ResumeStore

CONFIG = TrainConfig(epochs=3, batch_size=8, lr=0.05)
CNN = {"arch": "cnn2", "filters": 4, "kernel_size": 3, "hidden": 8}
RUN = {"experiment": "tiny", "labels": "random", "init_scale": 0.5}


def _data(seed=0, n=24):
    rng = np.random.default_rng(seed)
    return DeviceData(rng.integers(0, 256, (n, 6, 6, 1), dtype=np.uint8), rng.integers(0, 3, n), [0.5], [0.25])


def _trainer(log=None):
    model = initialize(build_model(CNN, (1, 6, 6), 3), 1.0, 7)
    return Trainer(model, _data(), CONFIG, seed=11, log=log)


def _paths(tmp_path):
    return {"live": tmp_path / "live" / "seed0.jsonl", "tensorboard": tmp_path / "tb"}


def _live_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    "seconds, done, total, expected",
    [(30.0, 3, 10, "0:01:10"), (7200.0, 1, 3, "4:00:00"), (59.4, 1, 2, "0:00:59"), (5.0, 4, 4, "0:00:00"), (5.0, 0, 4, "?")],
)
def test_eta_is_the_mean_epoch_time_times_the_epochs_left(seconds, done, total, expected):
    assert eta(seconds, done, total) == expected


def test_every_epoch_line_names_the_run_and_its_eta(tmp_path, caplog):
    log = logging.getLogger("test-progress")
    monitor = job_monitor(RUN, [{"seed": 0}], _paths(tmp_path), log=log)
    with caplog.at_level(logging.INFO, logger="test-progress"):
        _trainer(log).fit(monitor=monitor)
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert len(lines) == CONFIG.epochs
    for epoch, line in enumerate(lines, start=1):
        assert line.startswith(f"experiment=tiny labels=random init_scale=0.5 seed=0  epoch {epoch}/3  step {3 * epoch}  ")
        assert " ETA " in line
    assert lines[-1].endswith("ETA 0:00:00")


def test_the_live_file_holds_every_epoch_with_the_run_it_belongs_to(tmp_path):
    paths = _paths(tmp_path)
    result = _trainer().fit(monitor=job_monitor(RUN, [{"seed": 0}], paths))
    rows = _live_rows(paths["live"])
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]
    assert all(row["experiment"] == "tiny" and row["seed"] == 0 and row["init_scale"] == 0.5 for row in rows)
    assert rows[0]["test_acc"] is None  # NaN (no test set) is JSON's null
    live = pd.read_json(paths["live"], lines=True)
    np.testing.assert_allclose(live["loss"], result.metrics["loss"])
    np.testing.assert_allclose(live["train_acc"], result.metrics["train_acc"])


def test_a_resumed_run_rewrites_a_corrupt_live_file_and_goes_on(tmp_path):
    """A job killed after epoch 2 left a half-written last line; its rerun resumes from
    the saved state, replaces the file from its own record and appends from there."""
    paths = _paths(tmp_path)
    store = ResumeStore(tmp_path / "state.pt", "run")

    class Killed(Exception):
        pass

    def die(epoch):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        _trainer().fit(resume=store, on_epoch_end=die, save_every=1, monitor=job_monitor(RUN, [{"seed": 0}], paths))
    with open(paths["live"], "a") as handle:
        handle.write('{"epoch": 3, "lo')  # torn write
    result = _trainer().fit(resume=store, monitor=job_monitor(RUN, [{"seed": 0}], paths))
    rows = _live_rows(paths["live"])  # every line parses
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3]  # epoch 2 was redone, not doubled
    np.testing.assert_allclose([row["loss"] for row in rows], result.metrics["loss"])


def test_a_packed_group_reports_each_seed(tmp_path, caplog):
    seeds = [3, 5]
    models = [initialize(build_model(CNN, (1, 6, 6), 3), 1.0, s) for s in seeds]
    paths = {"live": tmp_path / "group.jsonl", "tensorboard": tmp_path / "tb"}
    log = logging.getLogger("test-progress-packed")
    with caplog.at_level(logging.INFO, logger="test-progress-packed"):
        results = PackedTrainer(models, [_data(0), _data(1)], CONFIG, seeds, log=log).fit(
            monitor=job_monitor(RUN, [{"seed": s} for s in seeds], paths, log=log)
        )
    rows = pd.read_json(paths["live"], lines=True)
    for seed, result in zip(seeds, results):
        mine = rows[rows["seed"] == seed]
        assert list(mine["epoch"]) == [0, 1, 2, 3]
        np.testing.assert_allclose(mine["loss"], result.metrics["loss"])
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert len(lines) == 3 and all(line.startswith("experiment=tiny labels=random init_scale=0.5 seeds=3,5  epoch ") for line in lines)
    assert all("2 replicas" in line and " ETA " in line for line in lines)


def test_tensorboard_event_files_hold_the_scalars_per_seed(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    paths = _paths(tmp_path)
    result = _trainer().fit(monitor=job_monitor(RUN, [{"seed": 0}], paths, tensorboard=True))
    events = EventAccumulator(str(paths["tensorboard"] / "seed0"))
    events.Reload()
    losses = events.Scalars("loss")
    assert [e.step for e in losses] == list(result.metrics["step"])
    np.testing.assert_allclose([e.value for e in losses], result.metrics["loss"], rtol=1e-6)
    assert {"loss", "train_acc", "lr"} <= set(events.Tags()["scalars"])
    assert "test_acc" not in events.Tags()["scalars"]  # no test set: NaN, not plotted


def test_an_unwritable_tensorboard_folder_is_a_warning(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    paths = {"live": tmp_path / "live.jsonl", "tensorboard": blocker / "tb"}  # a folder inside a file
    with caplog.at_level(logging.WARNING):
        result = _trainer().fit(monitor=job_monitor(RUN, [{"seed": 0}], paths, tensorboard=True))
    assert len(result.metrics) == 4  # the run went on
    assert f"TensorBoard folder {blocker / 'tb'} not writable" in caplog.text
    assert [row["epoch"] for row in _live_rows(paths["live"])] == [0, 1, 2, 3]


def test_tensorboard_missing_is_a_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with caplog.at_level(logging.WARNING):
        result = _trainer().fit(monitor=job_monitor(RUN, [{"seed": 0}], _paths(tmp_path), tensorboard=True))
    assert len(result.metrics) == 4
    assert "pip install 'randlabels[tensorboard]'" in caplog.text
    assert not (tmp_path / "tb").exists()


def test_an_unwritable_live_file_is_a_warning(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING):
        result = _trainer().fit(monitor=Monitor("run", live=blocker / "live.jsonl"))
    assert len(result.metrics) == 4
    assert f"live metrics file {blocker / 'live.jsonl'} not written" in caplog.text
    assert caplog.text.count("not written") == 1  # warned once, then left alone


def test_a_packed_group_of_variants_reports_each_under_its_init(tmp_path, caplog):
    """finetune_packed: one seed, the variants as replicas; live rows carry each init."""
    run = {"experiment": "tiny", "task": "random10", "init_scale": 0.5, "seed": 0}
    models = [initialize(build_model(CNN, (1, 6, 6), 3), scale, 7) for scale in (0.5, 2.0)]
    paths = {"live": tmp_path / "packed.jsonl", "tensorboard": tmp_path / "tb"}
    log = logging.getLogger("test-progress-variants")
    with caplog.at_level(logging.INFO, logger="test-progress-variants"):
        results = PackedTrainer(models, _data(), CONFIG, [11, 11], log=log).fit(
            monitor=job_monitor(run, [{"init": "scratch"}, {"init": "gaussian"}], paths, log=log)
        )
    rows = pd.read_json(paths["live"], lines=True)
    assert set(rows["seed"]) == {0}
    for init, result in zip(["scratch", "gaussian"], results):
        np.testing.assert_allclose(rows[rows["init"] == init]["loss"], result.metrics["loss"])
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    prefix = "experiment=tiny task=random10 init_scale=0.5 seed=0 inits=scratch,gaussian  epoch "
    assert len(lines) == 3 and all(line.startswith(prefix) for line in lines)
