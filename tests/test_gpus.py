"""GPU binding on a machine with several GPUs, tested with a faked device list.

Each worker process below claims devices exactly as a training job does and records
when it held which; the assertions are about what overlapped in time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from randlabels.training import gpus

SRC = Path(__file__).resolve().parents[1] / "src"

WORKER = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {src!r})
    import os
    from randlabels.training.gpus import bind_gpus
    count, per_gpu, hold, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    ids = bind_gpus(count, per_gpu, poll_seconds=0.05)
    start = time.time()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(ids)
    time.sleep(hold)
    json.dump({{"ids": ids, "start": start, "end": time.time()}}, open(out, "w"))
    """
)


def _env(tmp_path: Path, devices: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")}
    env.update({gpus.FAKE_ENV: devices, gpus.LOCK_DIR_ENV: str(tmp_path / "locks")})
    return env


def _run_workers(tmp_path: Path, devices: str, workers: int, count=1, per_gpu=1, hold=0.6) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(src=str(SRC)))
    env = _env(tmp_path, devices)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(count), str(per_gpu), str(hold), str(tmp_path / f"w{i}.json")], env=env)
        for i in range(workers)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    return [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(workers)]


def _max_sharing(records: list[dict]) -> dict[str, int]:
    """For each device, the most workers that held it at one moment."""
    most: dict[str, int] = {}
    for record in records:
        for device in record["ids"]:
            at_start = sum(
                device in other["ids"] and other["start"] <= record["start"] < other["end"] for other in records
            )
            most[device] = max(most.get(device, 0), at_start)
    return most


def test_concurrent_jobs_never_share_a_gpu(tmp_path):
    records = _run_workers(tmp_path, "0,1", workers=5)
    assert all(len(r["ids"]) == 1 and r["ids"][0] in {"0", "1"} for r in records)
    assert _max_sharing(records) == {"0": 1, "1": 1}  # both used, never by two at once


def test_sharing_allows_the_configured_number_of_jobs_per_gpu(tmp_path):
    records = _run_workers(tmp_path, "3", workers=5, per_gpu=2)
    assert _max_sharing(records) == {"3": 2}


def test_a_job_can_claim_several_gpus(tmp_path):
    records = _run_workers(tmp_path, "0,1,2,3", workers=3, count=2)
    assert all(len(set(r["ids"])) == 2 for r in records)
    assert max(_max_sharing(records).values()) == 1


def test_the_slot_of_a_killed_job_is_free_again(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(src=str(SRC)))
    env = _env(tmp_path, "0")
    holder = subprocess.Popen([sys.executable, str(script), "1", "1", "60", str(tmp_path / "h.json")], env=env)
    lock = tmp_path / "locks" / "gpu-0-slot0.lock"
    deadline = time.monotonic() + 30
    while not (lock.exists() and lock.read_text().strip() == str(holder.pid)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    records = _run_workers(tmp_path, "0", workers=1, hold=0)
    assert records[0]["ids"] == ["0"]


def test_visible_gpus_reads_the_environment(monkeypatch):
    monkeypatch.delenv(gpus.FAKE_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert gpus.visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpus.visible_gpus() == []
    monkeypatch.setenv(gpus.FAKE_ENV, "0,1,2")
    assert gpus.visible_gpus() == ["0", "1", "2"]


def test_nothing_is_bound_without_a_request_under_slurm_or_without_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv(gpus.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    monkeypatch.delenv(gpus.FAKE_ENV, raising=False)
    assert gpus.bind_gpus(0) == []
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert gpus.bind_gpus(1) == []
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpus.bind_gpus(1) == []
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_asking_for_more_gpus_than_visible_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(gpus.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(gpus.FAKE_ENV, "0")
    with pytest.raises(ValueError, match="asks for 2 GPUs but only 1"):
        gpus.bind_gpus(2)
