"""Resumable training: a stop signal saves the state, a rerun continues bit for bit."""

from __future__ import annotations

import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch

from randlabels.models.networks import build_model, initialize
from randlabels.training.engine import DeviceData, TrainConfig, Trainer
from randlabels.training.resume import ResumeStore, StopSignals, TrainingInterrupted, fingerprint

CONFIG = TrainConfig(epochs=4, batch_size=8, lr=0.05, momentum=0.9, weight_decay=1e-4, schedule="cosine")
CHECKPOINTS = [0, 2, 4]


class SignalOnBatch(DeviceData):
    """Data that sends this process ``signum`` when its ``at``-th training batch is cut."""

    def __init__(self, *args, at: int, signum: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.at, self.signum = 0, at, signum

    def batch(self, index):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return super().batch(index)


def _arrays(n=44, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 6, 6, 1), dtype=np.uint8), rng.integers(0, 3, n)


def _trainer(data):
    model = build_model({"arch": "cnn2", "filters": 4, "kernel_size": 3, "hidden": 8}, (1, 6, 6), 3)
    return Trainer(initialize(model, 1.0, 7), data, CONFIG, seed=11, test_data=_data())


def _data(cls=DeviceData, **kwargs):
    images, labels = _arrays()
    return cls(images, labels, [0.5], [0.25], **kwargs)


def _same(a: pd.DataFrame, b: pd.DataFrame):
    """Equal tables up to wall-clock time."""
    pd.testing.assert_frame_equal(a.drop(columns="seconds", errors="ignore"), b.drop(columns="seconds", errors="ignore"))


def _same_states(a: dict, b: dict):
    assert a.keys() == b.keys()
    for epoch in a:
        for name in a[epoch]:
            assert torch.equal(a[epoch][name], b[epoch][name]), (epoch, name)


@pytest.fixture(scope="module")
def uninterrupted():
    return _trainer(_data()).fit(checkpoint_epochs=CHECKPOINTS, eval_every=3)


# 44 samples in batches of 8: 6 steps per epoch; step 9 is mid-epoch 2, step 12 ends it.
@pytest.mark.parametrize("at_batch", [9, 12, 1])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_state_and_rerun_matches_uninterrupted(tmp_path, uninterrupted, at_batch, signum):
    store = ResumeStore(tmp_path / "state.pt", "run-a")
    data = _data(SignalOnBatch, at=at_batch, signum=signum)
    with StopSignals() as stop, pytest.raises(TrainingInterrupted) as info:
        _trainer(data).fit(checkpoint_epochs=CHECKPOINTS, eval_every=3, resume=store, stop=stop)
    assert info.value.signal_name == signal.Signals(signum).name
    assert info.value.step == at_batch  # saved right after the step in flight
    assert "rerun the workflow to resume" in str(info.value)
    assert store.load()["step_count"] == at_batch  # the state loads (weights-only), not started over

    resumed = _trainer(_data()).fit(checkpoint_epochs=CHECKPOINTS, eval_every=3, resume=store)
    _same(resumed.metrics, uninterrupted.metrics)
    _same(resumed.curve, uninterrupted.curve)
    _same_states(resumed.checkpoints, uninterrupted.checkpoints)


def test_handlers_are_restored_after_training():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals():
        assert signal.getsignal(signal.SIGTERM) != before
    assert signal.getsignal(signal.SIGTERM) == before


def test_periodic_saves_let_a_killed_run_resume_from_the_last_epoch(tmp_path, uninterrupted):
    """A kill -9 gives no warning: what remains is the save at the last epoch end."""
    store = ResumeStore(tmp_path / "state.pt", "run-a")

    class Killed(Exception):
        pass

    def die_after_epoch_3(epoch):
        if epoch == 3:
            raise Killed  # stands in for SIGKILL: nothing is saved at this point

    with pytest.raises(Killed):
        _trainer(_data()).fit(checkpoint_epochs=CHECKPOINTS, eval_every=3, resume=store,
                              on_epoch_end=die_after_epoch_3)
    saved = store.load()
    assert saved["progress"]["epoch"] == 3  # epochs 1-2 kept; epoch 3 is redone
    resumed = _trainer(_data()).fit(checkpoint_epochs=CHECKPOINTS, eval_every=3, resume=store)
    _same(resumed.metrics, uninterrupted.metrics)
    _same_states(resumed.checkpoints, uninterrupted.checkpoints)


def test_state_of_another_run_is_ignored(tmp_path, uninterrupted, caplog):
    path = tmp_path / "state.pt"
    data = _data(SignalOnBatch, at=9, signum=signal.SIGUSR1)
    with StopSignals() as stop, pytest.raises(TrainingInterrupted):
        _trainer(data).fit(checkpoint_epochs=CHECKPOINTS, resume=ResumeStore(path, "lr=0.05"), stop=stop)
    other = ResumeStore(path, "lr=0.1")
    assert other.load() is None
    assert "written for other settings" in caplog.text
    result = _trainer(_data()).fit(checkpoint_epochs=CHECKPOINTS, eval_every=3, resume=other)
    _same(result.metrics, uninterrupted.metrics)  # started over, not resumed


def test_unreadable_state_is_reported_and_ignored(tmp_path, caplog):
    path = tmp_path / "state.pt"
    path.write_bytes(b"not a checkpoint")
    assert ResumeStore(path, "x").load() is None
    assert str(path) in caplog.text


def test_save_every_sets_the_interval(tmp_path):
    store = ResumeStore(tmp_path / "state.pt", "x")
    seen = []
    _trainer(_data()).fit(resume=store, save_every=2,
                          on_epoch_end=lambda e: seen.append(store.path.exists()))
    # saves after epochs 2 (before the callback of epoch 3 runs: present from then on)
    assert seen == [False, False, True, True]


def test_fingerprint_follows_settings_and_file_contents(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"data")
    base = fingerprint({"lr": 0.1, "epochs": 3}, [a])
    assert fingerprint({"epochs": 3, "lr": 0.1}, [a]) == base  # key order does not count
    assert fingerprint({"lr": 0.2, "epochs": 3}, [a]) != base
    a.write_bytes(b"dat4")
    assert fingerprint({"lr": 0.1, "epochs": 3}, [a]) != base


def test_checkpoints_go_to_side_files_written_once(tmp_path, uninterrupted):
    """A periodic save writes the training state, not every checkpoint recorded so far."""
    from randlabels.io import load_torch

    store = ResumeStore(tmp_path / "state.pt", "run-a")
    inodes, listed = [], []

    def look(epoch):
        listed.append(load_torch(store.path)["progress"]["checkpoints"] if store.path.exists() else None)
        inodes.append({p.name: p.stat().st_ino for p in sorted(store.checkpoint_dir.glob("*.pt"))})

    result = _trainer(_data()).fit(checkpoint_epochs=CHECKPOINTS, eval_every=3, resume=store, on_epoch_end=look)
    _same_states(result.checkpoints, uninterrupted.checkpoints)
    # on_epoch_end runs before that epoch's save: the state saved after epoch e is seen at e + 1
    assert listed == [None, [[0]], [[0, 2]], [[0, 2]]]  # epochs, not tensors, in the state file
    assert inodes[1:] == [{"replica0-epoch0.pt": inodes[1]["replica0-epoch0.pt"]}] + [
        {"replica0-epoch0.pt": inodes[1]["replica0-epoch0.pt"], "replica0-epoch2.pt": inodes[2]["replica0-epoch2.pt"]}] * 2
    assert torch.equal(load_torch(store.checkpoint_path(0, 2))["state"]["conv1.weight"],
                       uninterrupted.checkpoints[2]["conv1.weight"])
    store.clear()
    assert not store.path.exists() and not store.checkpoint_dir.exists()


@pytest.mark.parametrize("damage", ["missing", "another run", "unreadable"])
def test_a_state_whose_checkpoint_file_is_lost_starts_over(tmp_path, uninterrupted, caplog, damage):
    from randlabels.io import load_torch, save_torch

    store = ResumeStore(tmp_path / "state.pt", "run-a")
    data = _data(SignalOnBatch, at=15, signum=signal.SIGUSR1)  # mid-epoch 3: checkpoints 0 and 2 saved
    with StopSignals() as stop, pytest.raises(TrainingInterrupted):
        _trainer(data).fit(checkpoint_epochs=CHECKPOINTS, eval_every=3, resume=store, stop=stop)
    side = store.checkpoint_path(0, 2)
    if damage == "missing":
        side.unlink()
    elif damage == "another run":
        save_torch({"fingerprint": "run-b", "state": load_torch(side)["state"]}, side)
    else:
        side.write_bytes(b"not a checkpoint")
    first = store.checkpoint_path(0, 0).stat().st_ino
    fresh = ResumeStore(tmp_path / "state.pt", "run-a")
    assert fresh.load() is None
    assert str(side) in caplog.text
    result = _trainer(_data()).fit(checkpoint_epochs=CHECKPOINTS, eval_every=3, resume=fresh)
    _same(result.metrics, uninterrupted.metrics)  # started over, and every checkpoint rewritten
    _same_states(result.checkpoints, uninterrupted.checkpoints)
    assert fresh.load()["progress"]["checkpoints"][0].keys() == {0, 2}
    assert store.checkpoint_path(0, 0).stat().st_ino != first  # not taken from the state it ignored


def test_save_min_seconds_spaces_the_periodic_saves_by_training_time(tmp_path, monkeypatch):
    """With a floor of 60 s and epochs of 25 s (a fake clock), the state is saved after
    epoch 3 (75 s) and not after 1 or 2; a stop signal would still save at once."""
    import dataclasses
    import types

    from randlabels.training import fitloop

    clock = [0.0]
    monkeypatch.setattr(fitloop, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    store = ResumeStore(tmp_path / "state.pt", "x")
    seen = []

    def epoch_end(epoch):
        seen.append(store.load()["progress"]["epoch"] if store.path.exists() else None)
        clock[0] += 25.0

    config = dataclasses.replace(CONFIG, epochs=6)
    model = build_model({"arch": "cnn2", "filters": 4, "kernel_size": 3, "hidden": 8}, (1, 6, 6), 3)
    Trainer(initialize(model, 1.0, 7), _data(), config, seed=11).fit(
        resume=store, save_min_seconds=60.0, on_epoch_end=epoch_end)
    # saved after epoch 3 (75 s since the start; the state then names epoch 4 as next), and
    # not again until 60 s later: after epoch 6, the last, nothing is saved
    assert seen == [None, None, None, 4, 4, 4]
