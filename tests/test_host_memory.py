"""A CPU job keeps the host memory it frees, so the next large block reuses it.

Each case runs in a fresh interpreter, since the allocator's settings last for the whole
process, and reads glibc's own account (``mallinfo2``): the bytes in mmapped blocks
while a large block is held, and the bytes of the heap once it is freed. What this
saves in time is measured in benchmarks/host_memory.py, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
BLOCK_MB = 256
BLOCK = BLOCK_MB * 2**20

# Allocates, fills and frees one block of BLOCK_MB, as an evaluation batch does;
# prints what glibc held in mmapped blocks meanwhile and in its heap afterwards.
CHILD = textwrap.dedent(
    """
    import ctypes, json, sys
    sys.path.insert(0, {src!r})
    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Mallinfo2
    kept = None
    if sys.argv[1] == "keep":
        from randlabels.training.host_memory import keep_freed_memory
        kept = keep_freed_memory()
    elif sys.argv[1] == "job_device":
        from randlabels.training.engine import job_device
        job_device("cpu", threads=1)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc({block_mb} * 2**20)
    ctypes.memset(block, 1, {block_mb} * 2**20)
    mmapped = libc.mallinfo2().hblkhd
    libc.free(block)
    print(json.dumps({{"kept": kept, "mmapped": mmapped, "heap_after_free": libc.mallinfo2().arena}}))
    """
)


def _child(setup: str) -> dict:
    code = CHILD.format(src=str(SRC), block_mb=BLOCK_MB)
    result = subprocess.run([sys.executable, "-c", code, setup], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def default():
    return _child("default")


def test_by_default_a_large_block_is_mapped_on_its_own_and_given_back(default):
    assert default["mmapped"] >= BLOCK  # its own mapping: freed, it goes back to the kernel
    assert default["heap_after_free"] < BLOCK


def test_kept_memory_serves_a_large_block_from_the_heap_and_keeps_it():
    kept = _child("keep")
    assert kept["kept"] is True  # glibc takes the settings
    assert kept["mmapped"] < BLOCK
    assert kept["heap_after_free"] >= BLOCK  # freed, it stays for the next block


def test_a_cpu_jobs_device_keeps_freed_memory():
    job = _child("job_device")
    assert job["mmapped"] < BLOCK
    assert job["heap_after_free"] >= BLOCK


def test_without_mallopt_nothing_is_set(monkeypatch):
    from randlabels.training import host_memory

    class NoMallopt:  # a C library without glibc's mallopt (musl's stub, macOS)
        def __init__(self, name):
            pass

    monkeypatch.setattr(host_memory.ctypes, "CDLL", NoMallopt)
    assert host_memory.keep_freed_memory() is False


def test_a_cpu_job_without_mallopt_says_so_in_its_log(monkeypatch, caplog):
    import torch

    from randlabels.training import host_memory
    from randlabels.training.engine import job_device

    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: False)
    threads = torch.get_num_threads()
    try:
        with caplog.at_level("INFO", logger="randlabels"):
            assert job_device("cpu", threads=1).type == "cpu"
    finally:
        torch.set_num_threads(threads)
    assert any("no glibc mallopt" in r.getMessage() and "slower" in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: True)
    try:
        with caplog.at_level("INFO", logger="randlabels"):
            job_device("cpu", threads=1)
    finally:
        torch.set_num_threads(threads)
    assert not any("mallopt" in r.getMessage() for r in caplog.records)
