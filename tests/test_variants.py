"""Tests of randlabels.inits.variants: names, the file each variant starts from, and the
initial state each builds (against transfer's states, computed by hand here)."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from randlabels.errors import InputFileError
from randlabels.inits import variants
from randlabels.inits.pretrained import clone_state, layer_groups
from randlabels.models.networks import build_model, head_prefix, initialize
from randlabels.training.checkpoints import save_checkpoints, save_init
from randlabels.workflow import plan

SPEC = {"arch": "cnn2", "filters": 4, "kernel_size": 3, "hidden": 5}
SHAPE = (1, 6, 6)
RUN = {"experiment": "e", "init_scale": 1.0, "seed": 0}


def test_names_parse_into_families_and_depths():
    assert variants.parse("pretrained") == variants.Variant("pretrained", "pretrained", None)
    assert variants.parse("layerwise2") == variants.Variant("layerwise2", "layerwise", 2)
    assert variants.parse("last13").depth == 13 and variants.parse("last13").partial
    assert not variants.parse("pretrained").partial
    for bad in ("first", "firstx", "deep2", "gaussian1", "first0", "first01", "First1", " first1", "first-1"):
        with pytest.raises(ValueError, match="unknown variant"):
            variants.parse(bad)


def test_the_wildcard_pattern_matches_the_names_that_parse():
    pattern = re.compile(variants.PATTERN)
    for name in ("scratch", "pretrained_norescale", "gaussian", "first1", "last12", "layerwise3", "covariance1"):
        assert pattern.fullmatch(name), name
        variants.parse(name)
    for name in ("deep2", "gaussian1", "pretrained2", "first"):
        assert not pattern.fullmatch(name), name
    construct = re.compile(variants.CONSTRUCT_PATTERN)
    assert construct.fullmatch("layerwise2") and construct.fullmatch("covariance1")
    assert not construct.fullmatch("first1") and not construct.fullmatch("gaussian")


def test_every_family_starts_from_a_file_the_plan_makes():
    assert set(variants.SOURCE) == set(variants.FAMILIES)
    for family, kind in variants.SOURCE.items():
        assert kind is None or kind in plan.PATHS, family
    for family, kind in variants.CONSTRUCT_SOURCE.items():
        assert variants.SOURCE[family] == "constructed_init"
        assert kind is None or kind in plan.PATHS


def test_transferred_layers_are_the_first_or_last_groups():
    model = build_model(SPEC, SHAPE, 3)  # two non-head layers: conv1, fc1
    assert variants.transferred_layers("first1", model) == [["conv1.weight", "conv1.bias"]]
    assert variants.transferred_layers("last1", model) == [["fc1.weight", "fc1.bias"]]
    assert variants.transferred_layers("first2", model) == variants.transferred_layers("last2", model) == layer_groups(model)
    with pytest.raises(ValueError) as err:
        variants.transferred_layers("last3", model)
    assert "last3" in str(err.value) and "2" in str(err.value)
    with pytest.raises(ValueError, match="only firstK and lastK"):
        variants.transferred_layers("pretrained", model)


@pytest.fixture()
def pretraining(tmp_path):
    """A checkpoint set (epoch 0 and a 'trained' epoch 2) and a fresh model for 3 classes."""
    init = clone_state(initialize(build_model(SPEC, SHAPE, 10), 1.0, seed=1))
    trained = {k: v * 3.0 + 0.5 for k, v in init.items()}
    path = tmp_path / "checkpoints.pt"
    save_checkpoints(path, spec=SPEC, input_shape=SHAPE, num_classes=10, labels="random",
                     states={0: init, 2: trained}, diverged=False, **RUN)
    model = initialize(build_model(SPEC, SHAPE, 10), 1.0, seed=2)
    return path, init, trained, model


def test_scratch_is_the_fresh_model(pretraining):
    _path, _init, _trained, model = pretraining
    state, diverged = variants.initial_state("scratch", model, None, None, reset_head=True)
    assert not diverged
    assert all(torch.equal(state[k], v) for k, v in clone_state(model).items())


@pytest.mark.parametrize("name", ["pretrained", "pretrained_norescale"])
def test_pretrained_variants_carry_every_weight_and_a_fresh_head(pretraining, name):
    path, init, trained, model = pretraining
    fresh = clone_state(model)
    state, diverged = variants.initial_state(name, model, path, {"labels": "random", **RUN}, reset_head=True)
    assert not diverged
    head = head_prefix(model)
    for key, value in state.items():
        if key.startswith(head + "."):
            assert torch.equal(value, fresh[key]), key
        elif name == "pretrained" and value.dim() > 1:  # rescaled to the initial norm
            ratio = init[key].double().norm() / trained[key].double().norm()
            assert torch.allclose(value.double(), trained[key].double() * ratio), key
        else:  # biases as trained; norescale: everything as trained
            assert torch.equal(value, trained[key]), key


def test_a_partial_variant_carries_only_its_layers(pretraining, caplog):
    path, init, trained, model = pretraining
    fresh = clone_state(model)
    with caplog.at_level(logging.INFO):
        state, _ = variants.initial_state("last1", model, path, None, reset_head=True, log=logging.getLogger("t"))
    assert "fc1" in caplog.text
    for key, value in state.items():
        if key.startswith("fc1."):
            assert not torch.equal(value, fresh[key]), key
        else:
            assert torch.equal(value, fresh[key]), key


def test_a_checkpoint_set_of_another_run_is_refused(pretraining):
    path, _init, _trained, model = pretraining
    with pytest.raises(InputFileError, match="seed"):
        variants.initial_state("pretrained", model, path, {"labels": "random", **RUN, "seed": 7}, reset_head=True)


def test_an_initialization_file_gets_this_tasks_head(tmp_path):
    upstream = initialize(build_model(SPEC, SHAPE, 10), 1.0, seed=1)
    built = {k: v + 1.0 for k, v in clone_state(upstream).items()}
    path = tmp_path / "init.pt"
    save_init(path, spec=SPEC, input_shape=SHAPE, num_classes=10, state=built, description="test",
              source_diverged=True, init="gaussian", **RUN)
    model = initialize(build_model(SPEC, SHAPE, 3), 1.0, seed=2)  # 3 downstream classes
    fresh = clone_state(model)
    state, diverged = variants.initial_state("gaussian", model, path, {"init": "gaussian", **RUN}, reset_head=True)
    assert diverged  # carried from the initialization file
    for key, value in state.items():
        want = fresh[key] if key.startswith("classifier.") else built[key]
        assert torch.equal(value, want), key


def test_the_fixed_variant_names_are_spelled_in_the_variants_module_only():
    """Plots, tables and targets ask inits.variants for scratch, pretrained and
    pretrained_norescale (docstrings aside); "gaussian" also names a dataset source,
    and is left out of this check."""
    import ast
    from pathlib import Path

    src = Path(variants.__file__).parents[1]
    names = {variants.SCRATCH, variants.PRETRAINED, variants.PRETRAINED_NORESCALE}
    found = []
    for path in sorted(src.rglob("*.py")):
        if path.name == "variants.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
        }
        found += [f"{path.relative_to(src)}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings]
    assert found == []
    assert variants.FIXED == (variants.SCRATCH, variants.PRETRAINED, variants.PRETRAINED_NORESCALE, variants.GAUSSIAN)
