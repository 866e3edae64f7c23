"""Test-session hooks: the longest test files start first.

`make test` runs each file on one of two pytest-xdist workers (``--dist loadfile
--no-loadscope-reorder``), in collection order. A long end-to-end file that starts
last keeps one worker busy long after the other has finished, so files are collected
longest first: a slow test may declare its expected minutes, ``@pytest.mark.slow(minutes=9)``
(a plain ``slow`` counts as 1), and a file weighs its longest test.
"""

from __future__ import annotations


def _minutes(item) -> float:
    marker = item.get_closest_marker("slow")
    return float(marker.kwargs.get("minutes", 1)) if marker is not None else 0.0


def pytest_collection_modifyitems(items) -> None:
    weight: dict = {}
    for item in items:
        weight[item.path] = max(weight.get(item.path, 0.0), _minutes(item))
    items.sort(key=lambda item: -weight[item.path])  # stable: a file's tests stay in order
