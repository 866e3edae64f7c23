"""Validation of a workflow config: the JSON schema, then rules across keys.

Runs when the Snakefile is read, before any job starts; every problem is reported
with the dotted path of the key it is about (``experiments.digits_cnn.pretrain.lr``).
Beyond the schema's standard meaning, an integer must be an int (2.0 is refused), no
number may be NaN or infinite, and the layer names and depths the stages use are
looked up in the model. ``python -m randlabels.workflow.config FILE...`` checks config files
without Snakemake (:func:`main`).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import math
import sys
from pathlib import Path

import jsonschema
import yaml

from randlabels.errors import ModelError, RandlabelsError
from randlabels.inits import variants
from randlabels.models.architectures import ARCHITECTURES, builtin_layers, is_factory, model_options, resolve_layer_name, scale_invariance, SCALE_INVARIANT
from randlabels.workflow import plan, targets

# The schema beside this package in a checkout (the workflow passes its own path).
SCHEMA = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"

# Training samples of the sources whose size is known before preparation (torchvision's
# datasets by class name); the split is checked against them before any job.
KNOWN_TRAIN_SIZES = {
    "digits": 1797,
    "MNIST": 60000,
    "FashionMNIST": 60000,
    "KMNIST": 60000,
    "CIFAR10": 50000,
    "CIFAR100": 50000,
    "SVHN": 73257,
    "STL10": 5000,
}


def _train_size(dataset: dict) -> int | None:
    """Training samples of a dataset entry, where known without preparing it."""
    if dataset["source"] == "gaussian":
        return dataset["n_samples"]
    return KNOWN_TRAIN_SIZES.get(dataset.get("name", dataset["source"]))


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
    if error.validator == "type" and "integer" in _types(error.validator_value) and isinstance(error.instance, float):
        hint = f" (write {int(error.instance)})" if error.instance.is_integer() else ""
        return f"{where}: {error.instance!r} is not an integer{hint}"
    if error.validator == "pattern" and error.schema == root["$defs"]["name"]:
        return (
            f"{where}: {error.instance!r} is not a valid name (it is used in file paths): a letter, "
            "then letters, digits, '_' or '-', nothing else (no spaces, no line break)"
        )
    if error.validator == "pattern" and ".finetune.variants." in where:
        try:
            variants.parse(error.instance)
        except ValueError as err:
            return f"{where}: {err}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not valid; valid names: {', '.join(map(str, error.validator_value))}"
    if _is_arch_choice(error):
        names = [n for option in error.validator_value for n in option.get("enum", [])]
        return (
            f"{where}: {error.instance!r} is not valid; valid names: {', '.join(names)}, or your own "
            "model's factory as 'package.module:function' (see README, \"Your own model\")"
        )
    if error.validator == "oneOf" and where.endswith(".finetune.target_accuracy"):
        return (
            f"{where}: {error.instance!r} is not valid; give either an accuracy in (0, 1] "
            "(target_accuracy: 0.9) or a fraction of the way from chance to 100 % "
            "(target_accuracy: {from_chance: 0.5}, f in (0, 1]), not both, nothing else"
        )
    if error.validator == "oneOf" and where.startswith("datasets"):
        return f"{where}: give exactly one of 'variances' or 'spectrum'"
    return f"{where}: {error.message}"


def _types(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _is_integer(_checker, instance) -> bool:
    """JSON schema's "integer", without whole-number floats: 2.0 satisfies the standard
    one, and a job would then get a float where it counts (``range(2.0)``)."""
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_nonfinite(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def schema_errors(config: dict, schema_path: str | Path) -> list[str]:
    """Messages for every schema violation, deepest (most specific) first per key.

    A value of type integer must be an int: 2.0 is refused (naming the key), not
    accepted as JSON schema's standard integer type would. Bounds on a non-finite
    number are left to :func:`nonfinite_errors`, which reports it once.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    base = jsonschema.validators.validator_for(schema)
    validator_class = jsonschema.validators.extend(
        base, type_checker=base.TYPE_CHECKER.redefine("integer", _is_integer)
    )
    validator = validator_class(schema)
    messages = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        # if/then and allOf wrap the real error: report the innermost ones.
        leaves = [leaf for leaf in _leaf_errors(error) if not _is_nonfinite(leaf.instance)]
        messages.extend(_describe(leaf, schema) for leaf in leaves)
    return list(dict.fromkeys(messages))


def nonfinite_errors(config, path=()) -> list[str]:
    """Every NaN or infinite number in ``config``, by key path: they pass every bound
    of the schema (comparisons with NaN are false) and no setting may be one."""
    if _is_nonfinite(config):
        return [f"{_key_path(path)}: {config} is not a finite number"]
    if isinstance(config, dict):
        items = config.items()
    elif isinstance(config, (list, tuple)):
        items = enumerate(config)
    else:
        return []
    return [message for key, value in items for message in nonfinite_errors(value, (*path, key))]


def _is_arch_choice(error: jsonschema.ValidationError) -> bool:
    """model.arch failed both of its forms: a built-in name, a factory path."""
    path = list(error.absolute_path)
    return error.validator == "anyOf" and path[-2:] == ["model", "arch"]


def _leaf_errors(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    if error.context and error.validator != "oneOf" and not _is_arch_choice(error):
        leaves = []
        for sub in error.context:
            leaves.extend(_leaf_errors(sub))
        return leaves
    return [error]


def semantic_errors(config: dict) -> list[str]:
    """Rules the schema cannot express: references, sizes, and combinations."""
    problems = []
    datasets = config["datasets"]
    for name, dataset in datasets.items():
        problems += _dataset_errors(f"datasets.{name}", dataset)
    for exp, entry in config["experiments"].items():
        where = f"experiments.{exp}"
        if entry["dataset"] not in datasets:
            problems.append(
                f"{where}.dataset: {entry['dataset']!r} is not defined under datasets "
                f"(defined: {', '.join(datasets)})"
            )
            continue
        source = datasets[entry["dataset"]]["source"]
        model_problems = []
        try:
            model_options(entry["model"])
        except ValueError as err:
            model_problems.append(f"{where}.model: {err}")
        arch = entry["model"]["arch"]
        if source == "gaussian" and arch in ARCHITECTURES and arch != "fc":
            model_problems.append(f"{where}.model.arch: {arch!r} needs images; dataset {entry['dataset']!r} is vector data (use 'fc')")
        if arch in ("vgg16", "vgg16_bn") and source == "digits":
            model_problems.append(f"{where}.model.arch: vgg16 needs images of at least 32×32; digits are 8×8")
        if arch == "cnn2" and entry["model"].get("kernel_size", 3) % 2 == 0:
            model_problems.append(f"{where}.model.kernel_size: must be odd ('same' padding)")
        problems += model_problems or model_errors(config, exp)
        split = plan.split_settings(config, exp)
        size = _train_size(datasets[entry["dataset"]])
        from_pool = source in ("digits", "gaussian")  # no official test set: test comes from the pool
        need = split["upstream"] + split["downstream"] + ((split["test"] or 0) if from_pool else 0)
        if size is not None and need > size:
            problems.append(
                f"{where}.split: upstream + downstream (+ test) = {need} exceeds the {size} training samples of {entry['dataset']!r}"
            )
        if from_pool and split["test"] is None and size is not None and need >= size:
            problems.append(
                f"{where}.split: no samples left for the test set (test: 0 if no stage needs one: "
                "no real labels up- or downstream)"
            )
        problems += _split_use_errors(config, exp, split)
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
            source = plan.from_labels(config, exp)
            if source not in pretrain["labels"]:
                problems.append(
                    f"{where}.finetune.from_labels: {source!r} is not among pretrain.labels {pretrain['labels']}"
                )
            tasks = plan.finetune_tasks(config, exp)
            if not settings["reset_head"] and any(plan.task_classes(t) not in (None, split["upstream_classes"]) for t in tasks):
                problems.append(f"{where}.finetune.reset_head: must be true when up- and downstream class counts differ")
            kinds = finetune.get("labels", "real")
            if "classes" in finetune and "random" not in ([kinds] if isinstance(kinds, str) else kinds):
                problems.append(f"{where}.finetune.classes: only random downstream labels take a class count; labels are {kinds}")
            for variant in plan.finetune_variants(config, exp):
                try:
                    variants.parse(variant)
                except ValueError as err:
                    problems.append(f"{where}.finetune.variants: {err}")
        elif "sample" in entry:
            problems.append(f"{where}.sample: only used by finetune variant 'gaussian', but there is no finetune section")
    return problems + targets.problems(config)


def _split_use_errors(config: dict, exp: str, split: dict) -> list[str]:
    """Empty split parts that a stage of ``exp`` would train or evaluate on: downstream
    0 with fine-tuning, test 0 with real labels (their test accuracy)."""
    where = f"experiments.{exp}.split"
    entry = config["experiments"][exp]
    problems = []
    if split["downstream"] == 0 and "finetune" in entry:
        problems.append(
            f"{where}.downstream: 0, but the experiment fine-tunes (finetune section), which trains "
            "on the downstream samples; give downstream ≥ 1, or remove the finetune section to "
            "only pre-train"
        )
    if split["test"] == 0:
        real = [f"pretrain.labels {entry['pretrain']['labels']}"] if "real" in entry["pretrain"]["labels"] else []
        if "finetune" in entry and "real" in plan.finetune_tasks(config, exp):
            real.append("a real-label fine-tuning task")
        if real:
            problems.append(
                f"{where}.test: 0, but real labels are evaluated on the test set ({' and '.join(real)}); "
                "give test ≥ 1 (or leave it out: all samples left)"
            )
    return problems


def _dataset_errors(where: str, dataset: dict) -> list[str]:
    """Settings of one dataset that agree with the schema but not with each other."""
    problems = []
    if dataset["source"] == "gaussian":
        variances, dim = dataset.get("variances"), dataset["dim"]
        if variances is not None and len(variances) != dim:
            problems.append(f"{where}.variances: {len(variances)} values for dim {dim}; give one variance per dimension")
        spectrum = dataset.get("spectrum")
        if spectrum is not None and spectrum["low"] > spectrum["high"]:
            problems.append(
                f"{where}.spectrum: low ({spectrum['low']}) is above high ({spectrum['high']}); "
                "the variances ramp from low up to high"
            )
    return problems


def model_errors(config: dict, exp: str) -> list[str]:
    """The model of ``exp`` against its data and the stages that name its layers.

    ``stats.layers``, ``sample.layer``, and the depth of firstK / lastK / layerwiseK /
    covarianceK are looked up in the model's layers: a built-in network's are known from
    its spec (:func:`builtin_layers`). An own model's factory (``arch:
    "package.module:function"``) is imported here, so a module that does not import
    stops the run before any job; where the input shape is known before the data are
    prepared (:func:`randlabels.workflow.plan.input_shape`), the model is built cheaply
    (:func:`randlabels.models.networks.check_model`; a factory that raises or returns an
    unusable model is reported here, otherwise in the first job that builds it) and its
    layers are checked.
    """
    where = f"experiments.{exp}"
    spec = config["experiments"][exp]["model"]
    if not is_factory(spec["arch"]):
        return _layer_errors(config, exp, builtin_layers(spec))
    from randlabels.models.networks import check_model, load_factory, weight_layers  # torch: only for own models

    try:
        load_factory(spec["arch"], f"{where}.model")
    except ModelError as err:
        return [str(err)]
    shape = plan.input_shape(config, exp)
    if shape is None:
        return []
    try:
        model = check_model(spec, shape, plan.split_settings(config, exp)["upstream_classes"], f"{where}.model")
    except ModelError as err:
        return [str(err)]
    return _layer_errors(config, exp, weight_layers(model), model)


def _layer_errors(config: dict, exp: str, layers: list[str], model=None) -> list[str]:
    """Layer names and depths of ``exp``'s stages that a model with the weight layers
    ``layers`` (in order; the last is the classifier) does not have. ``model``, if
    given (an own model, built), is checked for what the names do not tell: grouped
    convolutions, and layer groups a partial transfer can take."""
    where = f"experiments.{exp}"
    entry = config["experiments"][exp]
    problems = []
    named = [(f"{where}.stats.layers", layer) for layer in plan.stats_settings(config, exp)["layers"]]
    finetune = entry.get("finetune")
    names = plan.finetune_variants(config, exp) if finetune is not None else []
    if "gaussian" in names or "sample" in entry:
        named.append((f"{where}.sample.layer", plan.sample_settings(config, exp)["layer"]))
    modules = dict(model.named_modules()) if model is not None else {}
    below = layers[:-1]  # below the classifier: what firstK / lastK / layerwiseK can take
    for key, layer in named:
        try:
            name = resolve_layer_name(layers, layer)
        except ValueError as err:
            problems.append(f"{key}: {err}")
            continue
        if getattr(modules.get(name), "groups", 1) != 1:
            problems.append(f"{key}: {layer!r} ({name}) is a grouped convolution; Σx is defined for groups = 1 only")
    for variant in names:
        try:
            parsed = variants.parse(variant)
            family, depth = parsed.family, parsed.depth
        except ValueError:
            continue  # reported by semantic_errors
        try:
            if parsed.partial:
                if model is not None:
                    variants.transferred_layers(variant, model)  # also checks its layer groups
                elif depth > len(below):
                    raise ValueError(
                        f"variant {variant!r} transfers {depth} layers, but the model has only "
                        f"{len(below)} non-head layers ({', '.join(below)})"
                    )
            elif family in variants.CONSTRUCTED:
                if depth > len(below):
                    raise ValueError(
                        f"constructs {depth} layer(s), but the model has {len(below)} below the "
                        f"classifier ({', '.join(below)})"
                    )
                grouped = [n for n in below[:depth] if getattr(modules.get(n), "groups", 1) != 1]
                if grouped:
                    raise ValueError(f"grouped convolutions cannot be constructed from Σx: {', '.join(grouped)}")
        except ValueError as err:
            problems.append(f"{where}.finetune.variants: {variant}: {err}")
    return problems


#: The --config key that sets nested values: --config set=experiments.NAME.pretrain.epochs=5
SET_KEY = "set"


def command_line_config(config: dict, overrides: dict, default: dict | None = None) -> dict:
    """The config a run uses: Snakemake's ``config`` with ``overrides`` (the values of
    ``--config KEY=VALUE``) applied.

    ``default``: config.yaml's content when no ``--configfile`` was given. The workflow
    profile lets a --configfile replace config.yaml (replace-workflow-config), which
    would make ``--config device=cpu`` alone replace it too; given ``default``, the
    values change the default config instead, section by section.

    Values are read as YAML, as a config file's are: Snakemake hands ``false`` or
    ``[0, 1]`` over as strings (it knows only ``False``), which the schema would refuse.

    Nested values: ``--config set=PATH=VALUE`` (several: ``set='PATH=VALUE; PATH=VALUE'``),
    PATH dotted (``experiments.digits_cnn.pretrain.epochs``) and VALUE read as YAML;
    sections on the path that the config leaves out are created, and the schema check
    then judges every name. (Snakemake itself takes no dots in a key and reads nested
    values as strings.)
    """
    typed = {key: (value if key == SET_KEY else _read_as_yaml(value)) for key, value in overrides.items()}
    result = copy.deepcopy(dict(default if default is not None else config))
    _merge(result, typed)
    assignments = result.pop(SET_KEY, None)
    if assignments is None:
        return result
    if isinstance(assignments, str):
        assignments = [part for part in assignments.split(";") if part.strip()]
    for assignment in assignments:
        path, sep, text = str(assignment).partition("=")
        if not sep or not path.strip():
            raise ConfigError(
                f"--config {SET_KEY}={assignment!r}: expected PATH=VALUE, e.g. "
                f"--config {SET_KEY}=experiments.digits_cnn.pretrain.epochs=5"
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--config {SET_KEY}={assignment}: the value is not valid YAML: {err}") from None
        *sections, leaf = path.strip().split(".")
        node, walked = result, []
        for section in sections:
            walked.append(section)
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"--config {SET_KEY}={assignment}: {'.'.join(walked)} is {node!r}, not a section with keys"
                )
        node[leaf] = value
    return result


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


def yaml_errors(paths) -> list[str]:
    """One line per YAML config file of ``paths`` that does not read: a syntax error or
    a key given twice, as ``FILE, line N: problem``."""
    problems = []
    for path in paths:
        try:
            yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_StrictLoader)
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark or err.context_mark
            where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
            context = ""
            if err.context and err.context_mark is not None and err.problem_mark is not None:
                context = f" ({err.context} begun on line {err.context_mark.line + 1})"
            problems.append(f"{where}: {err.problem or err.context}{context}")
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
            problems.append(f"{path}: {' '.join(str(err).split())}")
    return problems



def _unscaled_parameters(config: dict, exp: str) -> list[str]:
    """An own model's parameters that init_scale does not scale (randlabels.models.
    networks.uncovered_parameters), where the model can be built from the config alone;
    none otherwise (a model that fails to build is model_errors' to report)."""
    spec = config["experiments"][exp]["model"]
    shape = plan.input_shape(config, exp) if is_factory(spec.get("arch", "")) else None
    if shape is None:
        return []
    from randlabels.models.networks import check_model, uncovered_parameters  # torch: only for own models

    try:
        model = check_model(spec, shape, plan.split_settings(config, exp)["upstream_classes"])
    except Exception:  # noqa: BLE001
        return []
    return uncovered_parameters(model)


def config_warnings(config: dict) -> list[str]:
    """What a valid config may mean other than intended, one line each: an init-scale
    experiment (several init_scales) on a network that divides the scale out, or on an
    own model with parameters the scale does not reach."""
    warnings = []
    for name, entry in config.get("experiments", {}).items():
        model = entry.get("model", {})
        several = len(entry.get("init_scales", [])) > 1
        unscaled = _unscaled_parameters(config, name) if several else []
        if unscaled:
            warnings.append(
                f"experiments.{name}: init_scales {entry['init_scales']} scale the conv and linear weights "
                f"only; the own model's other parameters ({', '.join(unscaled)}) keep the factory's "
                "initialization at every scale (README, Your own model)"
            )
        note = scale_invariance(model)
        if note and several:
            plain = SCALE_INVARIANT[model["arch"]]
            instead = f"use arch {plain}, whose weight scale" if plain else "a network without batch norm's weight scale"
            warnings.append(
                f"experiments.{name}: init_scales {entry['init_scales']} on {note}; {instead} is what "
                "the paper's init-scale experiments vary; or keep this experiment as a labelled "
                "batch-norm ablation"
            )
    return warnings


def check_config(config: dict, schema_path: str | Path, files=()) -> None:
    """Raise :class:`ConfigError` naming every problem, or return silently.

    ``files``: the YAML files the config was read from, checked for syntax errors and
    duplicate keys.
    """
    problems = yaml_errors(files) + nonfinite_errors(config) + schema_errors(config, schema_path)
    if not problems:
        problems = semantic_errors(config)
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _read_as_yaml(value):
    """A --config value as a config file would hold it: strings (also inside lists and
    sections, as Snakemake leaves them) read as YAML where that parses."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    if isinstance(value, list):
        return [_read_as_yaml(item) for item in value]
    if isinstance(value, dict):
        return {key: _read_as_yaml(item) for key, item in value.items()}
    return value


def _merge(base: dict, update: dict) -> dict:
    """``update`` merged into ``base`` section by section, as Snakemake merges config
    files and --config values; ``base`` is changed (nothing of ``update`` is shared)."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def main(argv=None) -> int:
    """``python -m randlabels.workflow.config FILE...``: check config files as the workflow would
    with ``--configfile FILE...`` (merged in order), one line per problem, without
    Snakemake. Snakemake reads the files named on its command line before the
    workflow's check runs, and reports a YAML syntax error in one of them naming
    neither file nor line; this names both."""
    parser = argparse.ArgumentParser(prog="python -m randlabels.workflow.config", description=main.__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="YAML config files")
    parser.add_argument("--schema", type=Path, default=SCHEMA, help="the JSON schema (default: %(default)s)")
    args = parser.parse_args(argv)
    problems = yaml_errors(args.files)
    if not problems:
        config: dict = {}
        for path in args.files:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not isinstance(loaded, dict):
                problems.append(f"{path}: not a mapping of keys at the top level")
            else:
                _merge(config, loaded)
        if not problems:
            try:
                check_config(config, args.schema)
            except ConfigError as err:
                problems = str(err).split("\n  - ")[1:]
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        for warning in config_warnings(config):
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{', '.join(map(str, args.files))}: valid")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
