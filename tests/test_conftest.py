"""tests/conftest.py: each pytest-xdist worker runs torch and numpy on its share of the
cores, and a folder the workers share (the tiny run) is made once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import conftest


def test_the_cores_are_shared_among_the_workers():
    assert conftest.thread_share(2, 2) == 1
    assert conftest.thread_share(2, 16) == 8
    assert conftest.thread_share(3, 16) == 5
    assert conftest.thread_share(4, 2) == 1  # never none
    assert conftest.thread_share(1, 16) is None  # one process keeps the libraries' defaults


def _threads_after_conftest(**env: str) -> tuple[int, str]:
    """torch's thread count and OPENBLAS_NUM_THREADS in a fresh process that imports
    conftest first, as a worker does."""
    clean = {k: v for k, v in os.environ.items() if k not in conftest.THREAD_VARIABLES and not k.startswith("PYTEST_XDIST")}
    code = ("import conftest, os, torch; "
            "print(torch.get_num_threads(), os.environ.get('OPENBLAS_NUM_THREADS', '-'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env={**clean, **env},
                            capture_output=True, text=True, check=True)
    threads, blas = result.stdout.split()
    return int(threads), blas


def test_a_worker_sets_its_share_before_torch_starts_unless_the_user_set_threads():
    cores = len(os.sched_getaffinity(0))
    share = conftest.thread_share(2, cores)
    assert _threads_after_conftest(PYTEST_XDIST_WORKER_COUNT="2") == (share, str(share))
    # A user's value other than the share is kept: torch runs what it runs for that value
    # outside a worker (it caps a request at the machine's cores, so on a one-core machine
    # only the untouched OPENBLAS_NUM_THREADS tells the two apart).
    own = "1" if share > 1 else "2"
    assert _threads_after_conftest(PYTEST_XDIST_WORKER_COUNT="2", OMP_NUM_THREADS=own) == (
        _threads_after_conftest(OMP_NUM_THREADS=own)[0], "-")
    # Not a worker: nothing is set.
    assert _threads_after_conftest()[1] == "-"


# A pytest-xdist worker asking for the shared folder "run": its own temporary folder is
# popen-gwN under the session's, as pytest-xdist gives it; ``make`` logs each call and
# takes a while, failing when asked to.
_ASK = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from workflow_helpers import made_once

    session, worker, fail = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "fail"
    os.environ["PYTEST_XDIST_WORKER"] = worker

    class Factory:
        def getbasetemp(self):
            return session / f"popen-{worker}"

    def make(folder):
        with open(session / "calls.log", "a") as log:
            log.write(worker + "\\n")
        folder.mkdir()
        time.sleep(0.5)
        if fail:
            raise RuntimeError("make failed")
        (folder / "result").write_text(worker)

    print(made_once(Factory(), "run", make))
""")


def _ask(session: Path, worker: str, fail: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _ASK, str(session), worker, "fail" if fail else "ok"],
                            cwd=Path(__file__).parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_shared_folder_is_made_by_one_worker_while_the_other_waits(tmp_path):
    workers = [_ask(tmp_path, "gw0"), _ask(tmp_path, "gw1")]
    outputs = [worker.communicate(timeout=60) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert {out.strip() for out, _ in outputs} == {str(tmp_path / "run")}  # the session's, not a worker's
    makers = (tmp_path / "calls.log").read_text().split()
    assert len(makers) == 1  # the other waited, then took what the first made
    assert (tmp_path / "run" / "result").read_text() == makers[0]


def test_a_shared_folder_whose_making_failed_is_made_afresh_by_the_next_worker(tmp_path):
    failed = _ask(tmp_path, "gw0", fail=True)
    _, error = failed.communicate(timeout=60)
    assert failed.returncode != 0 and "make failed" in error
    assert (tmp_path / "run").is_dir()  # the failed attempt's leftovers
    retried = _ask(tmp_path, "gw1")
    out, error = retried.communicate(timeout=60)
    assert retried.returncode == 0, error
    assert (tmp_path / "calls.log").read_text().split() == ["gw0", "gw1"]
    assert (tmp_path / "run" / "result").read_text() == "gw1"
