"""docs/PERFORMANCE.md as `make bench` rewrites it: its own section only."""

from __future__ import annotations

from benchmarks import report


def test_a_run_rewrites_its_own_section_and_keeps_the_other_and_the_hand_written_part(tmp_path, monkeypatch):
    document = tmp_path / "PERFORMANCE.md"
    monkeypatch.setattr(report, "render_section", lambda result: f"## {result['machine']['device']}\n\nrun {result['run']}")
    report.update_document({"machine": {"device": "cpu"}, "run": 1}, document)
    report.update_document({"machine": {"device": "cuda"}, "run": 2}, document)
    document.write_text(document.read_text() + "\n## Test suite (measured by hand)\n\n| make test | 19 min |\n")

    report.update_document({"machine": {"device": "cpu"}, "run": 3}, document)
    text = document.read_text()
    assert "run 3" in text and "run 1" not in text  # this device's section rewritten
    assert "## cuda\n\nrun 2" in text  # the other device's kept
    assert text.startswith(report.HEADER.rstrip())
    assert text.endswith("\n## Test suite (measured by hand)\n\n| make test | 19 min |\n")  # kept, once
    assert text.count("Test suite") == 1
    assert text.index("run 3") < text.index("run 2") < text.index("Test suite")  # the order of DEVICES, then the rest

    fresh = tmp_path / "new.md"
    report.update_document({"machine": {"device": "cpu"}, "run": 4}, fresh)
    assert "run 4" in fresh.read_text() and "make bench-gpu" in fresh.read_text()  # the GPU placeholder
