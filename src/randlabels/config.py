"""Validation of a workflow config: the JSON schema, then rules across keys.

Runs when the Snakefile is read, before any job starts; every problem is reported
with the dotted path of the key it is about (``experiments.digits_cnn.pretrain.lr``).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import jsonschema
import yaml

from . import plan, targets
from .errors import RandlabelsError
from .models import model_options

# Training samples of the datasets whose size is known before they are prepared.
KNOWN_TRAIN_SIZES = {"digits": 1797, "cifar10": 50000, "cifar100": 50000}


class ConfigError(RandlabelsError, ValueError):
    """A config that cannot be run; the message lists every problem found."""


def _key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def _allowed_keys(schema: dict, root: dict) -> list[str]:
    """Property names a (sub)schema declares, following a local $ref."""
    keys = set(schema.get("properties", {}))
    ref = schema.get("$ref", "")
    if ref.startswith("#/"):
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        keys |= set(_allowed_keys(target, root))
    return sorted(keys)


def _describe(error: jsonschema.ValidationError, root: dict) -> str:
    where = _key_path(error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = _allowed_keys(error.schema, root)
        extra = [k for k in error.instance if k not in allowed] if isinstance(error.instance, dict) else []
        hints = []
        for key in extra:
            close = difflib.get_close_matches(key, allowed, n=1)
            hints.append(f"{where}.{key}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        if hints:
            return f"unknown key {', '.join(hints)}; allowed here: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not valid; valid names: {', '.join(map(str, error.validator_value))}"
    if error.validator == "oneOf" and where.startswith("datasets"):
        return f"{where}: give exactly one of 'variances' or 'spectrum'"
    return f"{where}: {error.message}"


def schema_errors(config: dict, schema_path: str | Path) -> list[str]:
    """Messages for every schema violation, deepest (most specific) first per key."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    messages = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        # if/then and allOf wrap the real error: report the innermost ones.
        leaves = _leaf_errors(error)
        messages.extend(_describe(leaf, schema) for leaf in leaves)
    return list(dict.fromkeys(messages))


def _leaf_errors(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    if error.context and error.validator != "oneOf":
        leaves = []
        for sub in error.context:
            leaves.extend(_leaf_errors(sub))
        return leaves
    return [error]


def semantic_errors(config: dict) -> list[str]:
    """Rules the schema cannot express: references, sizes, and combinations."""
    problems = []
    datasets = config["datasets"]
    for exp, entry in config["experiments"].items():
        where = f"experiments.{exp}"
        if entry["dataset"] not in datasets:
            problems.append(
                f"{where}.dataset: {entry['dataset']!r} is not defined under datasets "
                f"(defined: {', '.join(datasets)})"
            )
            continue
        source = datasets[entry["dataset"]]["source"]
        try:
            model_options(entry["model"])
        except ValueError as err:
            problems.append(f"{where}.model: {err}")
        arch = entry["model"]["arch"]
        if source == "gaussian" and arch != "fc":
            problems.append(f"{where}.model.arch: {arch!r} needs images; dataset {entry['dataset']!r} is vector data (use 'fc')")
        if arch in ("vgg16", "vgg16_bn") and source == "digits":
            problems.append(f"{where}.model.arch: vgg16 needs images of at least 32×32; digits are 8×8")
        if arch == "cnn2" and entry["model"].get("kernel_size", 3) % 2 == 0:
            problems.append(f"{where}.model.kernel_size: must be odd ('same' padding)")
        split = plan.split_settings(config, exp)
        size = KNOWN_TRAIN_SIZES.get(source)
        if source == "gaussian":
            size = datasets[entry["dataset"]]["n_samples"]
        from_pool = source in ("digits", "gaussian")  # no official test set: test comes from the pool
        need = split["upstream"] + split["downstream"] + ((split["test"] or 0) if from_pool else 0)
        if size is not None and need > size:
            problems.append(
                f"{where}.split: upstream + downstream (+ test) = {need} exceeds the {size} training samples of {entry['dataset']!r}"
            )
        if from_pool and split["test"] is None and size is not None and need >= size:
            problems.append(f"{where}.split: no samples left for the test set")
        labels = [plan.scale_label(scale) for scale in entry["init_scales"]]
        clashing = sorted({label for label in labels if labels.count(label) > 1})
        if clashing:
            problems.append(
                f"{where}.init_scales: {entry['init_scales']} give the same path label {clashing} "
                "(scales are written with 6 significant digits)"
            )
        pretrain = entry["pretrain"]
        late = [e for e in pretrain.get("checkpoints", []) if e > pretrain["epochs"]]
        if late:
            problems.append(f"{where}.pretrain.checkpoints: {late} lie after the last epoch ({pretrain['epochs']})")
        finetune = entry.get("finetune")
        if finetune is not None:
            settings = plan.finetune_settings(config, exp)
            if settings["from_labels"] not in pretrain["labels"]:
                problems.append(
                    f"{where}.finetune.from_labels: {settings['from_labels']!r} is not among pretrain.labels {pretrain['labels']}"
                )
            tasks = plan.finetune_tasks(config, exp)
            if not settings["reset_head"] and any(plan.task_classes(t) not in (None, split["upstream_classes"]) for t in tasks):
                problems.append(f"{where}.finetune.reset_head: must be true when up- and downstream class counts differ")
            kinds = finetune.get("labels", "real")
            if "classes" in finetune and "random" not in ([kinds] if isinstance(kinds, str) else kinds):
                problems.append(f"{where}.finetune.classes: only random downstream labels take a class count; labels are {kinds}")
            for variant in settings["variants"]:
                try:
                    plan.parse_variant(variant)
                except ValueError as err:
                    problems.append(f"{where}.finetune.variants: {err}")
        elif "sample" in entry:
            problems.append(f"{where}.sample: only used by finetune variant 'gaussian', but there is no finetune section")
    return problems + targets.problems(config)


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping.

    Plain YAML loading keeps the last of two equal keys: two experiments written under
    one name would silently become one.
    """

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.MarkedYAMLError(
                    problem=f"key {key!r} given twice (first on line {seen[key] + 1})",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def duplicate_key_errors(paths) -> list[str]:
    """Messages for keys given twice in the YAML config files ``paths``."""
    problems = []
    for path in paths:
        try:
            yaml.load(Path(path).read_text(), Loader=_StrictLoader)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            problems.append(f"{path}, line {mark.line + 1}: {err.problem}")
    return problems


def check_config(config: dict, schema_path: str | Path, files=()) -> None:
    """Raise :class:`ConfigError` naming every problem, or return silently.

    ``files``: the YAML files the config was read from, checked for duplicate keys.
    """
    problems = duplicate_key_errors(files) + schema_errors(config, schema_path)
    if not problems:
        problems = semantic_errors(config)
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
