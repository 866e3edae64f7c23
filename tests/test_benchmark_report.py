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


def test_the_host_memory_section_gives_both_arms_and_their_ratio():
    row = {"images": 3000, "trials": 3, "same_numbers": True, "ratio": 1.74,
           "default_seconds": 6.8, "default_system_seconds": 3.2, "default_minor_faults": 1288584.0, "default_peak_rss_gib": 1.75,
           "kept_seconds": 3.9, "kept_system_seconds": 0.7, "kept_minor_faults": 262849.0, "kept_peak_rss_gib": 1.92}
    text = report._host_memory({"benchmarks": {"host_memory": [row]}})
    assert "Default / kept: 1.74×; final losses the same" in text
    assert "| glibc defaults | 6.8 | 3.2 | 1,288,584 | 1.75 |" in text
    assert "| freed memory kept (a CPU job) | 3.9 | 0.7 | 262,849 | 1.92 |" in text
    assert "**different**" in report._host_memory({"benchmarks": {"host_memory": [{**row, "same_numbers": False}]}})
    assert report._host_memory({"benchmarks": {}}) == ""


def test_the_startup_section_gives_both_optimizers_and_what_a_job_saves():
    row = {"trials": 5, "same_numbers": True, "ratio": 1.52, "saved_seconds": 1.31,
           "torch_optim_seconds": 3.83, "torch_optim_script_seconds": 3.71, "torch_optim_dynamo_imported": True,
           "library_seconds": 2.52, "library_script_seconds": 2.40, "library_dynamo_imported": False}
    text = report._startup({"benchmarks": {"startup": [row]}})
    assert "torch.optim / library: 1.52×, 1.31 s saved per job; final losses the same" in text
    assert "| torch.optim.SGD + LambdaLR | 3.83 | 3.71 | yes |" in text
    assert "| randlabels SGD | 2.52 | 2.40 | no |" in text
    assert "**different**" in report._startup({"benchmarks": {"startup": [{**row, "same_numbers": False}]}})
    assert report._startup({"benchmarks": {}}) == ""


def test_the_resume_section_gives_both_arms_the_cost_of_a_save_and_their_ratio():
    row = {"images": 20000, "epochs": 4, "trials": 3, "floor_seconds": 60.0, "save_seconds": 0.31, "save_mb": 118.2,
           "every_epoch_epoch_seconds": 1.25, "every_epoch_saves": 3.0, "floor_epoch_seconds": 0.94, "floor_saves": 0.0,
           "ratio": 1.33}
    text = report._resume({"benchmarks": {"resume": [row]}})
    assert "VGG16 on 20,000 random CIFAR-shaped images per epoch, 4 epochs" in text
    assert "One save of the weights and momentum: 118 MB in 0.31 s. Every epoch / floor: 1.33×." in text
    assert "| a save after every epoch | 1.25 | 3 |" in text
    assert "| saves at least 60 s apart (the default) | 0.94 | 0 |" in text
    assert report._resume({"benchmarks": {}}) == ""
