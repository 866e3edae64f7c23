"""Provenance stamps: version, git commit and settings hash in every file the library writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import randlabels
from randlabels import provenance
from randlabels.analysis.statsfile import identity, write_stats
from randlabels.data.h5file import read_dataset, write_dataset
from randlabels.data.splits import make_split, read_split, write_split
from randlabels.io import read_table, write_table
from randlabels.training.checkpoints import read_checkpoints, read_init, save_checkpoints, save_init
from randlabels.training.packed_job import read_bundle_run, save_bundle

ROOT = Path(__file__).resolve().parents[1]
HEX64 = r"[0-9a-f]{64}"
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture(autouse=True)
def no_job():
    """Each test starts as library use (a script run in-process by another test records a job)."""
    provenance.forget_job()
    yield
    provenance.forget_job()


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false", *args]
    return subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "code.py").write_text("x = 1\n")
    _git(repo, "add", "code.py")
    _git(repo, "commit", "-q", "-m", "first")
    return repo


# --------------------------------------------------------------------------- git


@needs_git
def test_git_state_is_the_commit_and_clean(repo):
    assert provenance.git_state(repo) == (_git(repo, "rev-parse", "HEAD"), "false")


@needs_git
def test_an_edit_to_a_tracked_file_is_dirty_an_untracked_file_is_not(repo):
    (repo / "new.py").write_text("untracked\n")
    assert provenance.git_state(repo)[1] == "false"
    (repo / "code.py").write_text("x = 2\n")
    assert provenance.git_state(repo) == (_git(repo, "rev-parse", "HEAD"), "true")


@needs_git
def test_a_repository_without_commits_is_unknown(tmp_path):
    _git(tmp_path, "init", "-q")
    assert provenance.git_state(tmp_path) == ("unknown", "unknown")


@needs_git
def test_outside_git_or_without_git_it_is_unknown(tmp_path, repo, monkeypatch):
    assert provenance.git_state(tmp_path) == ("unknown", "unknown")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git program
    assert provenance.git_state(repo) == ("unknown", "unknown")


@needs_git
def test_the_stamp_names_the_checkout_of_the_imported_package():
    checkout = Path(randlabels.__file__).resolve().parents[2]
    assert provenance.package_checkout() == checkout
    stamp = provenance.stamp()
    assert stamp["randlabels_version"] == randlabels.__version__
    if not (checkout / ".git").exists():
        assert stamp["git_commit"] == "unknown"
    else:
        assert stamp["git_commit"] == _git(checkout, "rev-parse", "HEAD")
        assert stamp["git_dirty"] in ("true", "false")
    assert stamp["rule"] == "none" and stamp["settings_sha256"] == "none"
    assert all(isinstance(value, str) for value in stamp.values())


def test_the_stamp_names_the_library_versions_that_ran(monkeypatch):
    import platform
    from importlib import metadata

    import torchvision

    recorded = provenance.stamp()["libraries"]
    assert recorded == (f"python {platform.python_version()}, numpy {np.__version__}, "
                        f"torch {metadata.version('torch')}, torchvision {metadata.version('torchvision')}")
    assert torch.__version__.startswith(metadata.version("torch"))  # the one imported, not another install
    assert torchvision.__version__.startswith(metadata.version("torchvision"))
    # A package that is not installed is named as such, not an error.
    provenance.libraries.cache_clear()
    monkeypatch.setattr(provenance, "LIBRARIES", ("numpy", "no-such-package-randlabels"))
    try:
        assert provenance.libraries().endswith(f"numpy {np.__version__}, no-such-package-randlabels absent")
    finally:
        provenance.libraries.cache_clear()


def test_the_stamp_names_the_processor(monkeypatch, tmp_path):
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.exists() else []
    model = models[0] if models else (platform.processor() or "unknown")
    assert provenance.stamp()["machine"] == f"{platform.machine()}, {model}"
    # Without /proc/cpuinfo (macOS, Windows): the platform module's word, or "unknown".
    provenance.machine.cache_clear()
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(tmp_path / "absent", *a, **k)
                        if str(path) == "/proc/cpuinfo" else real_open(path, *a, **k))
    monkeypatch.setattr(platform, "processor", lambda: "")
    try:
        assert provenance.machine() == f"{platform.machine()}, unknown"
    finally:
        provenance.machine.cache_clear()


# --------------------------------------------------------------------------- settings


def test_settings_hash_is_stable_across_key_order_and_plain_types():
    a = provenance.settings_hash("pretrain", {"seed": 1, "training": {"lr": 0.1, "epochs": [0, 5]}})
    b = provenance.settings_hash("pretrain", {"training": {"epochs": (0, 5), "lr": 0.1}, "seed": np.int64(1)})
    assert a == b and len(a) == 64
    assert provenance.settings_hash("p", {"x": Path("a/b"), "y": np.arange(2)}) == provenance.settings_hash(
        "p", {"y": [0, 1], "x": "a/b"})


def test_settings_hash_differs_for_other_params_or_rule():
    base = provenance.settings_hash("pretrain", {"seed": 1})
    assert provenance.settings_hash("pretrain", {"seed": 2}) != base
    assert provenance.settings_hash("finetune", {"seed": 1}) != base


def test_settings_that_are_not_plain_values_are_refused_by_name():
    with pytest.raises(TypeError, match=r"params\.model"):
        provenance.settings_hash("r", {"model": object()})


def _script_object(rule: str, params: dict, inputs: dict | None = None, wildcards: dict | None = None):
    """The ``snakemake`` object a rule's script gets (its class moves between Snakemake
    versions; a stand-in with the same attributes where this one lacks it)."""
    inputs, wildcards = inputs or {}, wildcards or {}
    try:
        from snakemake.iocontainers import InputFiles, Log, OutputFiles, Params, ResourceList, Snakemake, Wildcards
    except ImportError:
        return SimpleNamespace(rule=rule, params=SimpleNamespace(**params), input=SimpleNamespace(**inputs),
                               wildcards=SimpleNamespace(**wildcards))
    files = InputFiles()  # as a job has them: a named list of paths is a slice of one flat list
    for name, value in inputs.items():
        start = len(files)
        files.extend(value if isinstance(value, list) else [value])
        files._set_name(name, start, len(files) if isinstance(value, list) else None)
    return Snakemake(files, OutputFiles(), Params(fromdict=params), Wildcards(fromdict=wildcards),
                     1, ResourceList(), Log(), {}, rule, None)


def test_record_job_takes_the_rule_and_named_params():
    digest = provenance.record_job(_script_object("statistics", {"seed": 3, "stats": {"layers": ["first"]}}))
    assert digest == provenance.settings_hash("statistics", {"stats": {"layers": ["first"]}, "seed": 3})
    assert provenance.stamp()["rule"] == "statistics" and provenance.stamp()["settings_sha256"] == digest
    provenance.forget_job()
    assert provenance.stamp()["settings_sha256"] == "none"
    stand_in = SimpleNamespace(params=SimpleNamespace(seed=3))  # what some tests pass scripts
    assert provenance.record_job(stand_in) == provenance.settings_hash("unknown", {"seed": 3})


def test_lineage_hash_is_canonical_json_order_free_and_tells_runs_and_inputs_apart():
    import hashlib

    digest = provenance.lineage_hash("s", {"seed": "1", "exp": "a"}, ["y", "x"])
    assert digest == hashlib.sha256(b'{"inputs":["x","y"],"settings":"s","wildcards":{"exp":"a","seed":"1"}}').hexdigest()
    assert provenance.lineage_hash("s", {"exp": "a", "seed": "1"}, ["x", "y"]) == digest
    others = [("t", {"exp": "a", "seed": "1"}, ["x", "y"]), ("s", {"exp": "b", "seed": "1"}, ["x", "y"]),
              ("s", {"exp": "a", "seed": "1"}, ["x", "y", "y"]), ("s", {"exp": "a", "seed": "1"}, ["x"])]
    assert len({digest, *(provenance.lineage_hash(*other) for other in others)}) == 5


def _written_by(rule: str, params: dict, write, wildcards: dict | None = None) -> str:
    """Write a file as job ``rule`` would; its lineage hash."""
    provenance.record_settings(rule, params, wildcards)
    try:
        write()
        return provenance.stamp()["lineage_sha256"]
    finally:
        provenance.forget_job()


def test_a_job_lineage_folds_in_what_each_input_file_records(tmp_path):
    """Stamped inputs (HDF5, table, checkpoint) add their lineage, a table stamped
    before lineages existed its settings hash, a damaged one "unreadable"; raw data,
    code, a numpy archive and a folder add nothing."""
    split = make_split(np.zeros(20, dtype=bool), upstream=5, downstream=5, test=5, upstream_classes=2,
                       downstream_classes=2, seed=0)
    h5 = _written_by("make_split", {"n": 5}, lambda: write_split(split, tmp_path / "split.h5"), {"seed": "0"})
    table = _written_by("aggregate", {}, lambda: write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.tsv"))
    checkpoint = _written_by("pretrain", {"lr": 0.1}, lambda: save_checkpoints(tmp_path / "c.pt", **CHECKPOINT))
    (tmp_path / "old.tsv").write_text("# rule: aggregate\n# settings_sha256: " + "a" * 64 + "\na\n1\n")
    (tmp_path / "damaged.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:300])
    raw = {"raw.gz": b"\x1f\x8b\x08\x00binary", "code.py": b"# coding: utf-8\nx = 1\n", "images.txt": b"1 2 3\n"}
    for name, data in raw.items():
        (tmp_path / name).write_bytes(data)
    np.savez(tmp_path / "arrays.npz", images=np.zeros(3))
    (tmp_path / "folder").mkdir()
    assert len({h5, table, checkpoint}) == 3 and all(len(lineage) == 64 for lineage in (h5, table, checkpoint))

    stamped = {"split": str(tmp_path / "split.h5"), "tables": [str(tmp_path / "t.tsv"), str(tmp_path / "old.tsv")],
               "checkpoints": str(tmp_path / "c.pt"), "damaged": str(tmp_path / "damaged.pt")}
    unstamped = {"raw": [str(tmp_path / name) for name in raw], "npz": str(tmp_path / "arrays.npz"),
                 "folder": str(tmp_path / "folder"), "missing": str(tmp_path / "absent.h5")}
    wildcards = {"exp": "e", "seed": "3"}
    digest = provenance.record_job(_script_object("statistics", {"k": 1}, {**stamped, **unstamped}, wildcards))
    want = provenance.lineage_hash(digest, wildcards, [h5, table, "a" * 64, checkpoint, provenance.UNREADABLE])
    assert provenance.stamp()["lineage_sha256"] == want
    # The same input named twice counts once.
    provenance.record_job(_script_object("statistics", {"k": 1}, {**stamped, "again": str(tmp_path / "c.pt")}, wildcards))
    assert provenance.stamp()["lineage_sha256"] == want


def test_tables_with_the_same_settings_from_other_upstream_settings_have_other_lineages(tmp_path):
    """What the summary's hashes are for: experiment ``e``'s aggregate table in two
    results folders has the aggregate rule's (empty) settings in both; its lineage
    differs where the statistics it collects were taken with other settings."""
    stamps = []
    for folder, layers in (("one", ["first"]), ("two", ["fc1"])):
        stats = tmp_path / folder / "seed0.h5"
        _written_by("statistics", {"layers": layers}, lambda: write_stats(
            stats, [], {"experiment": "e", "labels": "random", "init_scale": 1.0, "seed": 0}),
            {"exp": "e", "seed": "0"})
        provenance.record_job(_script_object("aggregate_statistics", {}, {"stats": [str(stats)]}, {"exp": "e"}))
        write_table(pd.DataFrame({"x": [1]}), tmp_path / folder / "misalignment.tsv")
        stamps.append(provenance.read(tmp_path / folder / "misalignment.tsv"))
    assert stamps[0]["settings_sha256"] == stamps[1]["settings_sha256"]
    assert stamps[0]["lineage_sha256"] != stamps[1]["lineage_sha256"]
    # Library use outside a job has no lineage.
    provenance.forget_job()
    assert provenance.stamp()["lineage_sha256"] == "none"


def test_a_prepared_dataset_lineage_folds_in_its_raw_data_checksum(tmp_path):
    """The same dataset settings from other raw files give other lineages (and so does
    all made from them); the same raw files the same one; data generated from its
    settings (checksum "") adds nothing."""
    images = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2, 1)

    def prepared(name: str, checksum: str) -> str:
        attrs = {"name": "d", "kind": "image", "source": "arrays", "checksum": checksum, "num_classes": 2,
                 "norm_mean": [0.5], "norm_std": [0.2]}

        def write():
            for _ in range(2):  # written twice in one job: the source counts once
                write_dataset(tmp_path / name, images=images, labels=[0, 1, 0, 1], is_test=[False] * 4,
                              class_names=["a", "b"], attrs=attrs)
        lineage = _written_by("prepare_dataset", {"settings": {"path": "x.npz"}}, write, {"dataset": "d"})
        assert provenance.read(tmp_path / name)["lineage_sha256"] == lineage
        return lineage

    one, again, other = (prepared(f"{i}.h5", checksum) for i, checksum in
                         enumerate(["sha256:" + "1" * 64, "sha256:" + "1" * 64, "sha256:" + "2" * 64]))
    generated = prepared("g.h5", "")
    settings = provenance.settings_hash("prepare_dataset", {"settings": {"path": "x.npz"}})
    assert one == again == provenance.lineage_hash(settings, {"dataset": "d"}, ["source sha256:" + "1" * 64])
    assert other == provenance.lineage_hash(settings, {"dataset": "d"}, ["source sha256:" + "2" * 64])
    assert generated == provenance.lineage_hash(settings, {"dataset": "d"}, [])
    # Downstream: a split made from each dataset inherits the difference.
    provenance.record_settings("make_split", {"n": 2}, {"seed": "0"}, [tmp_path / "0.h5"])
    from_one = provenance.stamp()["lineage_sha256"]
    assert from_one == provenance.lineage_hash(provenance.settings_hash("make_split", {"n": 2}), {"seed": "0"}, [one])
    provenance.record_settings("make_split", {"n": 2}, {"seed": "0"}, [tmp_path / "2.h5"])
    assert provenance.stamp()["lineage_sha256"] != from_one
    # Outside a job there is no lineage to fold it into.
    provenance.forget_job()
    provenance.record_source("sha256:" + "3" * 64)
    assert provenance.stamp()["lineage_sha256"] == "none"


# --------------------------------------------------------------------------- writers


@pytest.fixture
def job():
    digest = provenance.record_settings("test_rule", {"seed": 0})
    return {**provenance.stamp(), "settings_sha256": digest}


def test_statistics_file(tmp_path, job):
    path = tmp_path / "stats.h5"
    write_stats(path, [], {"experiment": "e", "labels": "random", "init_scale": 1.0, "seed": 0})
    assert provenance.read(path) == job
    assert identity(path)["experiment"] == "e"


def test_dataset_file_and_a_rewritten_one_gets_a_new_stamp(tmp_path, job):
    path = tmp_path / "data.h5"
    attrs = {"name": "d", "kind": "image", "source": "test", "checksum": "", "num_classes": 2,
             "norm_mean": [0.5], "norm_std": [0.2]}
    images = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2, 1)
    write_dataset(path, images=images, labels=[0, 1, 0, 1], is_test=[False] * 4, class_names=["a", "b"], attrs=attrs)
    assert provenance.read(path) == job
    data = read_dataset(path)
    provenance.record_settings("other", {})
    write_dataset(tmp_path / "again.h5", images=data.images, labels=data.labels, is_test=data.is_test,
                  class_names=data.class_names, attrs=data.attrs)
    assert provenance.read(tmp_path / "again.h5")["rule"] == "other"


def test_split_file(tmp_path, job):
    split = make_split(np.zeros(20, dtype=bool), upstream=5, downstream=5, test=5, upstream_classes=2,
                       downstream_classes=2, seed=0)
    write_split(split, tmp_path / "split.h5")
    assert provenance.read(tmp_path / "split.h5") == job
    assert read_split(tmp_path / "split.h5").seed == 0


CHECKPOINT = dict(spec={"arch": "fc"}, input_shape=[2], num_classes=2, init_scale=1.0, seed=0, labels="random",
                  states={0: {"w": torch.zeros(2)}}, diverged=False, experiment="e")


def test_checkpoint_set_initialization_and_bundle(tmp_path, job):
    save_checkpoints(tmp_path / "c.pt", **CHECKPOINT)
    assert provenance.read(tmp_path / "c.pt") == job
    assert read_checkpoints(tmp_path / "c.pt")["provenance"] == job
    save_init(tmp_path / "i.pt", spec={"arch": "fc"}, input_shape=[2], num_classes=2, state={"w": torch.zeros(2)},
              description="test")
    assert read_init(tmp_path / "i.pt")["provenance"] == job
    save_bundle(tmp_path / "b.pt", {0: {"checkpoints": CHECKPOINT, "metrics": pd.DataFrame({"epoch": [0]})}})
    assert provenance.read(tmp_path / "b.pt") == job
    fields, _ = read_bundle_run(tmp_path / "b.pt", 0)
    save_checkpoints(tmp_path / "unpacked.pt", **fields)  # a bundle's entry is still save_checkpoints' arguments


def test_library_use_without_a_job(tmp_path):
    save_checkpoints(tmp_path / "c.pt", **CHECKPOINT)
    stamp = provenance.read(tmp_path / "c.pt")
    assert stamp["rule"] == "none" and stamp["settings_sha256"] == "none"
    assert stamp["randlabels_version"] == randlabels.__version__ and stamp["git_commit"]


# --------------------------------------------------------------------------- tables


def test_table_leads_with_its_stamp_and_round_trips_a_hash_in_a_value(tmp_path, job):
    frame = pd.DataFrame({"name": ["#first", "a # b", "c#"], "value": [1.5, float("nan"), 3.0]})
    write_table(frame, tmp_path / "t.tsv")
    lines = (tmp_path / "t.tsv").read_text().splitlines()
    assert lines[: len(provenance.KEYS)] == [f"# {key}: {job[key]}" for key in provenance.KEYS]
    assert lines[len(provenance.KEYS)] == "name\tvalue"
    assert provenance.read(tmp_path / "t.tsv") == job
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.tsv"), frame)


def test_an_older_table_without_header_lines_still_reads(tmp_path):
    frame = pd.DataFrame({"#col": ["x", "#y"], "b": [1, 2]})  # even a first column named with '#'
    frame.to_csv(tmp_path / "old.tsv", sep="\t", index=False)
    pd.testing.assert_frame_equal(read_table(tmp_path / "old.tsv"), frame)
    assert provenance.read(tmp_path / "old.tsv") == {}


def test_an_empty_frame_keeps_its_columns(tmp_path):
    frame = pd.DataFrame({"a": pd.Series([], dtype=float), "b": pd.Series([], dtype=float)})
    write_table(frame, tmp_path / "t.tsv")
    assert list(read_table(tmp_path / "t.tsv").columns) == ["a", "b"]


def test_no_table_reader_bypasses_read_table():
    """Tables lead with '#' lines that only read_table skips: library and scripts read through it."""
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("src", "workflow")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "io.py" and "read_csv" in path.read_text()
    ]
    assert offenders == []


def test_a_first_column_named_with_a_hash_is_not_taken_for_a_stamp_line(tmp_path):
    frame = pd.DataFrame({"# n": [1, 2], "b": ["x", "#y"]})
    write_table(frame, tmp_path / "t.tsv")
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.tsv"), frame)
