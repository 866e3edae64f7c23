"""The light library: randlabels.analysis.stats and randlabels.models.networks without the workflow's
packages, and the README's example, run exactly as the README shows it."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
import tomllib

import numpy as np
import pytest

from workflow_helpers import ROOT

MARKER = "<!-- library-example -->"

# Import names of what only the workflow needs; the rest of the `workflow` extra's
# closure is added from the installed metadata (_workflow_only_modules).
WORKFLOW_MODULES = {
    "snakemake", "snakemake_executor_plugin_slurm", "snakemake_interface_common", "pandas",
    "h5py", "seaborn", "matplotlib", "sklearn", "scipy", "yaml", "jsonschema", "pygments",
}

# Runs in a fresh interpreter: a finder ahead of every other refuses the blocked
# packages as if they were not installed, then the library is imported and the README's
# block executed; its results go to a .npz for the assertions here.
CHILD = textwrap.dedent(
    """
    import contextlib, importlib.abc, io, json, sys

    blocked = set(json.loads(sys.argv[1]))
    early = sorted(m for m in sys.modules if m.partition(".")[0] in blocked)
    assert not early, f"imported before the blocker: {early}"


    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None


    sys.meta_path.insert(0, Blocker())
    try:
        import yaml  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("the blocker let yaml through")

    import numpy as np
    import torch

    import randlabels.models.networks as models
    from randlabels.models.architectures import ARCHITECTURES
    import randlabels.analysis.covariance  # noqa: F401
    import randlabels.analysis.stats  # noqa: F401

    # The models module works too: every built-in network builds, one trains a step.
    layers = {}
    for arch in ARCHITECTURES:
        shape = (64,) if arch == "fc" else (3, 32, 32)
        layers[arch] = len(models.weight_layers(models.check_model({"arch": arch}, shape, 10)))
    net = models.initialize(models.build_model({"arch": "cnn2"}, (3, 8, 8), 10), 1.0, seed=0)
    net(torch.randn(4, 3, 8, 8)).logsumexp(dim=1).sum().backward()

    namespace = {"__name__": "readme_example"}
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(open(sys.argv[2], encoding="utf-8").read(), "README.md", "exec"), namespace)
    arrays = {k: np.asarray(namespace[k].detach() if isinstance(namespace[k], torch.Tensor) else namespace[k])
              for k in ("cov_x", "mean_w", "cov_w", "sigma", "f", "pooled", "mean_p", "cov_p", "score", "control")}
    np.savez(sys.argv[3], **arrays)
    leaked = sorted(m for m in sys.modules if m.partition(".")[0] in blocked)
    json.dump({"stdout": stdout.getvalue(), "layers": layers, "leaked": leaked}, open(sys.argv[4], "w"))
    """
)


def readme_example() -> str:
    """The ```python block that follows the marker in README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(MARKER) == 1, f"README.md must hold {MARKER} exactly once"
    match = re.match(r"\s*```python\n(.*?)\n```", text.split(MARKER, 1)[1], re.S)
    assert match, f"no ```python block right after {MARKER} in README.md"
    return match.group(1)


def _top_level_modules(dist: importlib.metadata.Distribution) -> set[str]:
    names = set()
    for line in (dist.read_text("top_level.txt") or "").split():
        names.add(line.strip())
    for file in dist.files or []:
        first = file.parts[0]
        if first.endswith(".py"):
            names.add(first[:-3])
        elif "." not in first and not first.startswith("_") and file.name == "__init__.py":
            names.add(first)
    return names


def _closure(requirements: list[str]) -> set[str]:
    """Installed distributions ``requirements`` pull in (markers evaluated, extras followed)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo, seen, names = [Requirement(r) for r in requirements], set(), set()
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        names.add(name)
        for extra in {""} | {canonicalize_name(e) for e in req.extras}:
            if (name, extra) not in seen:
                seen.add((name, extra))
                for line in dist.requires or []:
                    sub = Requirement(line)
                    if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                        todo.append(Requirement(line.split(";")[0]))
    return names


def _workflow_only_modules() -> set[str]:
    """Top-level modules of the distributions that the `workflow` extra adds to the library's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    library = _closure(project["dependencies"])
    workflow = _closure(project["dependencies"] + project["optional-dependencies"]["workflow"])
    modules = set()
    for name in workflow - library:
        modules |= _top_level_modules(importlib.metadata.distribution(name))
    return modules


@pytest.fixture(scope="module")
def light_run(tmp_path_factory):
    """The README's example in a fresh interpreter that cannot import the workflow's packages."""
    folder = tmp_path_factory.mktemp("light")
    blocked = sorted(WORKFLOW_MODULES | _workflow_only_modules())
    (folder / "example.py").write_text(readme_example(), encoding="utf-8")
    (folder / "child.py").write_text(CHILD, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(folder / "child.py"), json.dumps(blocked), str(folder / "example.py"),
         str(folder / "results.npz"), str(folder / "report.json")],
        cwd=folder, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, f"the light library failed:\n{done.stdout}\n{done.stderr}"
    report = json.loads((folder / "report.json").read_text())
    with np.load(folder / "results.npz") as data:
        results = {k: data[k] for k in data.files}
    return blocked, report, results


def test_the_blocked_set_covers_the_workflow(light_run):
    blocked, report, _ = light_run
    assert {"snakemake", "pandas", "h5py", "matplotlib", "yaml", "scipy", "sklearn"} <= set(blocked)
    assert not {"torch", "torchvision", "numpy", "PIL"} & set(blocked)  # the library's own
    assert report["leaked"] == []


def test_models_build_without_the_workflow(light_run):
    _, report, _ = light_run
    assert report["layers"] == {"cnn2": 3, "fc": 3, "vgg16": 14, "vgg16_bn": 14, "resnet18": 21}


def test_readme_example_covariances(light_run):
    _, _, r = light_run
    d = 3 * 7 * 7
    for name in ("cov_x", "cov_w", "cov_p"):
        cov = r[name]
        assert cov.shape == (d, d) and cov.dtype == np.float64, name
        assert np.isfinite(cov).all(), name
        np.testing.assert_allclose(cov, cov.T, rtol=0, atol=1e-15 * np.abs(cov).max(), err_msg=name)
        eig = np.linalg.eigvalsh(cov)
        assert eig.min() >= -1e-12 * eig.max(), name
    assert r["mean_w"].shape == r["mean_p"].shape == (d,)
    # Smoothed noise: strongly correlated pixels, so a spread-out spectrum of Σx.
    eig_x = np.linalg.eigvalsh(r["cov_x"])
    assert eig_x.min() > 0 and eig_x.max() / eig_x.min() > 10
    # 64 filters: rank 63; 192 pooled filters: full rank.
    assert np.linalg.matrix_rank(r["cov_w"]) == 63
    assert r["pooled"].shape == (192, d)
    assert np.linalg.matrix_rank(r["cov_p"]) == d


def test_readme_example_transfer_function(light_run):
    _, _, r = light_run
    sigma, f = r["sigma"], r["f"]
    assert sigma.shape == f.shape == (147,)
    assert np.isfinite(sigma).all() and np.isfinite(f).all()
    assert (sigma >= 0).all() and (f >= 0).all() and (f > 0).any()
    assert (np.diff(sigma) <= 0).all()
    np.testing.assert_allclose(sigma**2, np.sort(np.linalg.eigvalsh(r["cov_x"]))[::-1], rtol=1e-9, atol=1e-12)
    # f² sums to the trace of Σw (the v_i are an orthonormal basis).
    assert (f**2).sum() == pytest.approx(np.trace(r["cov_w"]), rel=1e-9)


def test_readme_example_misalignment(light_run):
    _, report, r = light_run
    lines = report["stdout"].splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Σw is singular: numerical rank 63 < 147 dimensions")
    assert "pool_filters" in lines[0] and "at least 148 weight vectors" in lines[0]
    score, control = float(r["score"]), float(r["control"])
    assert np.isfinite(score) and np.isfinite(control)
    assert score > 0 and control > 0
    # Untrained filters are not aligned with the data: about as misaligned as with a random basis.
    assert 0.8 < score / control < 1.25
    assert lines[1] == f"misalignment {score:.1f}, against a random basis {control:.1f}"
