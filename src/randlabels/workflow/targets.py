"""The paper's experiments as named targets: which tables each combines, and how.

A target (``snakemake fig_transfer``) lists experiments in the config's ``targets``
section. It reads the per-experiment tables the workflow already makes (fine-tuning
curves and summaries, misalignment, f(σ), activation statistics), combines them into
one tidy table (results/paper/NAME.tsv) and draws one figure (results/paper/NAME.png)
with a module of :mod:`randlabels.plots`. What each target needs from an experiment is
checked when the config is loaded, so a misconfigured target fails before any job.

Plain pandas: tables and figures are rebuilt without torch.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from randlabels.analysis import eigenfilters
from randlabels.inits import variants
from randlabels.models.architectures import scale_invariance
from randlabels.workflow import plan

# Per-experiment tables a target may read (names of plan.tables entries).
FINETUNE_TABLES = ("finetune_curves", "transfer_summary")
STATS_TABLES = ("misalignment", "transfer_function", "activations")


@dataclass(frozen=True)
class Target:
    """One named target: what it reads, what it requires of an experiment, how it is drawn."""

    description: str
    tables: tuple[str, ...]
    plot: str  # module of randlabels.plots
    requires: Callable[[dict, str], list[str]]
    build: Callable[[dict[str, pd.DataFrame], dict], tuple[pd.DataFrame, pd.DataFrame]]
    # The figure's keyword arguments beyond its table, from the experiments' settings.
    options: Callable[[dict], dict] = lambda info: {}  # noqa: E731


# ----------------------------------------------------------------- requirements


def _finetune_variants(config: dict, exp: str) -> list[str]:
    if not plan.has_finetune(config, exp):
        return []
    return list(plan.finetune_variants(config, exp))


def _needs_variants(*wanted: str, families: tuple[str, ...] = ()) -> Callable[[dict, str], list[str]]:
    """A requirement: fine-tuning with scratch, the ``wanted`` variants and at least one
    variant of each of ``families`` (e.g. layerwise2)."""

    def check(config: dict, exp: str) -> list[str]:
        names = _finetune_variants(config, exp)
        if not names:
            return ["needs a finetune section"]
        problems = [f"needs finetune variant {v!r}" for v in (variants.SCRATCH, *wanted) if v not in names]
        present = {variants.parse(v).family for v in names}
        problems += [f"needs a finetune variant {f}K (e.g. {f}1)" for f in families if f not in present]
        return problems

    return check


def _needs_random_tasks(config: dict, exp: str) -> list[str]:
    problems = _needs_variants()(config, exp)
    if problems:
        return problems
    random_tasks = [t for t in plan.finetune_tasks(config, exp) if t != "real"]
    return [] if random_tasks else ["needs random downstream labels (finetune.labels: random, finetune.classes: [...])"]


def _needs_conv(config: dict, exp: str) -> list[str]:
    return [] if plan.is_conv(config, exp) else ["needs a convolutional first layer (arch cnn2, vgg16, resnet18, or an own model whose first layer is a Conv2d)"]


def _needs_cnn2(config: dict, exp: str) -> list[str]:
    arch = plan.experiment(config, exp)["model"]["arch"]
    return [] if arch == "cnn2" else [f"needs arch cnn2 (its kernel_size is the x axis), not {arch!r}"]


def _nothing(config: dict, exp: str) -> list[str]:
    return []


def _specialization_needs(config: dict, exp: str) -> list[str]:
    problems = _needs_variants(variants.PRETRAINED)(config, exp)
    if not problems and plan.finetune_settings(config, exp)["probe_samples"] < 1:
        problems.append("needs finetune.probe_samples ≥ 1 (the activation statistics)")
    return problems


# ----------------------------------------------------------------- table builders


def _with_depth(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with ``family`` and ``depth`` (k of firstK etc., NaN otherwise)."""
    parsed = summary["variant"].map(variants.parse)
    out = summary.copy()
    out["family"] = parsed.map(lambda p: p.family)
    out["depth"] = parsed.map(lambda p: np.nan if p.depth is None else float(p.depth))
    return out


def _variants(table: pd.DataFrame, keep) -> pd.DataFrame:
    return table[table["variant"].map(keep)].reset_index(drop=True)


def _build_transfer(tables: dict, info: dict):
    keep = lambda v: v in (variants.SCRATCH, variants.PRETRAINED, variants.PRETRAINED_NORESCALE)  # noqa: E731
    return _variants(tables["transfer_summary"], keep), _variants(tables["finetune_curves"], keep)


def _build_gaussian_init(tables: dict, info: dict):
    keep = lambda v: v in variants.FIXED  # noqa: E731
    summary = _variants(tables["transfer_summary"], keep)
    return summary, summary


def _build_depth(families: tuple[str, ...]):
    """Summary rows of scratch, the fixed variants and the depth families. Scratch is
    the figure's no-transfer baseline (k = 0): its gain and speed-up are the dashed
    line at 0 and 1, not a point of each family."""

    def build(tables: dict, info: dict):
        summary = _with_depth(tables["transfer_summary"])
        summary = summary[summary["family"].isin(families) | summary["depth"].isna()].reset_index(drop=True)
        return summary, summary

    return build


def _build_transfer_map(tables: dict, info: dict):
    summary = tables["transfer_summary"]
    summary = summary[summary["task"] != "real"].copy()
    summary["classes"] = summary["task"].map(plan.task_classes).astype(int)
    summary = summary[summary["variant"].isin(variants.FIXED)].reset_index(drop=True)
    # One map over all class counts: in the figure the tasks differ only by `classes`.
    return summary, summary.assign(task="random labels")


def _experiment_columns(table: pd.DataFrame, info: dict, keys: tuple[str, ...]) -> pd.DataFrame:
    """The table with per-experiment settings (kernel size, augmentation, ...) as columns."""
    out = table.copy()
    for key in keys:
        out[key] = out["experiment"].map(lambda exp: info[exp][key])
    return out


def _build_misalignment(tables: dict, info: dict):
    """Per-seed rows (``pooled`` false) and, where the target reads them, the rows of Σw
    pooled over seeds (``pooled`` true, ``seed`` empty, ``seeds`` the number pooled; of
    the weights, and of their change from initialization, ``of``): one table, which the
    misalignment figure splits again."""
    from randlabels.analysis.statsfile import OF_WEIGHTS  # h5py: only in the job

    table = tables["misalignment"]
    pooled = tables.get("misalignment_pooled")
    if pooled is not None and not pooled.empty:
        per_seed = table.assign(pooled=False, of=OF_WEIGHTS)  # per seed: Σw of the weights
        table = pd.concat([per_seed, pooled.assign(pooled=True)], ignore_index=True)
        for column in ("seed", "seeds", "filters"):  # integers, empty where they do not apply
            if column in table.columns:
                table[column] = table[column].astype("Int64")
    table = _experiment_columns(table, info, ("model", "augment"))
    return table, table


def _build_transfer_function(tables: dict, info: dict):
    """f(σ) rows with the model and f_change = f − f(epoch 0) of the same run and
    eigen-direction rank (the figure's lower row; METHODS.md, "Change from
    initialization")."""
    from randlabels.plots.transfer_function import change_from_init  # plotting stack: only in the job

    table = _experiment_columns(tables["transfer_function"], info, ("model",))
    table["f_change"] = change_from_init(table)
    return table, table


def _build_kernel_size(tables: dict, info: dict):
    """The misalignment target's rows (per seed, and pooled over the seeds: of the
    weights and of their change) with the kernel size and the layer's input dimension."""
    table, _ = _build_misalignment(tables, info)
    table = _experiment_columns(table, info, ("kernel_size",))
    dims = tables["transfer_function"].groupby(["experiment", "layer"])["index"].max() + 1
    table["dim"] = [int(dims.get((e, l), np.nan)) for e, l in zip(table["experiment"], table["layer"])]
    return table, table


def _build_specialization(tables: dict, info: dict):
    """Per-layer ReLU statistics before the switch (upstream checkpoints, measured on
    the upstream data) and after it (every learning-curve point of fine-tuning, on the
    downstream probe images): tidy rows (phase, x, layer, statistic, value)."""
    ids = ["experiment", "variant", "init_scale", "seed"]
    curves = tables["finetune_curves"]
    stat_columns = [c for c in curves.columns if ":" in c and c.split(":", 1)[0] in ("frac_active", "frac_dead", "mean_activation")]
    down = curves[[*ids, "task", "step", *stat_columns]].melt(
        id_vars=[*ids, "task", "step"], var_name="column", value_name="value"
    )
    down = down.dropna(subset=["value"])
    down["statistic"] = down["column"].str.split(":", n=1).str[0]
    down["layer"] = down["column"].str.split(":", n=1).str[1]
    down = down.assign(phase="downstream", x=down["step"].astype(float))
    frames = [down[[*ids, "task", "phase", "x", "layer", "statistic", "value"]]]
    acts = tables["activations"]
    if not acts.empty:
        acts = acts[acts["labels"] == acts["experiment"].map(lambda e: info[e]["from_labels"])]
        up = acts.melt(
            id_vars=["experiment", "init_scale", "seed", "epoch", "module"],
            value_vars=["frac_active", "frac_dead", "mean_activation"],
            var_name="statistic", value_name="value",
        )
        # Upstream rows belong to every downstream variant that starts from them.
        up = up.rename(columns={"module": "layer"}).assign(phase="upstream", x=up["epoch"].astype(float), variant=variants.PRETRAINED, task="")
        frames.append(up[[*ids, "task", "phase", "x", "layer", "statistic", "value"]])
    table = pd.concat(frames, ignore_index=True)
    table = _experiment_columns(table, info, ("model",))
    # The figure shows one downstream task per experiment: real labels where there are
    # any, else the first task (the table keeps them all).
    down_rows = table["phase"] == "downstream"
    tasks = table[down_rows].groupby("experiment")["task"].agg(lambda t: "real" if "real" in set(t) else sorted(set(t))[0])
    shown = ~down_rows | (table["task"] == table["experiment"].map(tasks))
    return table, table[shown].drop(columns="task")


def _build_eigenfilters(tables: dict, info: dict):
    """Rank-by-rank comparison of Σw's and Σx's eigenvectors per experiment; the figure
    draws the first experiment's filters and eigenvectors."""
    rows = tables["eigenfilters"]
    return eigenfilters.rank_comparison(rows), rows


def _target_accuracy_of_first(info: dict) -> dict:
    """The transfer map's speed-ups are to the first experiment's target accuracy (an
    accuracy, or {from_chance: f} resolved per class count in the table)."""
    return {"target": next(iter(info.values()))["target_accuracy"]}


TARGETS: dict[str, Target] = {
    "fig_transfer": Target(
        "Transfer: pre-trained on random labels (rescaled or not) against scratch, downstream on real or fresh random labels, per init scale.",
        FINETUNE_TABLES, "learning_curves", _needs_variants(variants.PRETRAINED), _build_transfer),
    "fig_misalignment": Target(
        "First-layer misalignment over training, data basis against a random basis, random against real labels; per seed and with Σw pooled over the seeds.",
        STATS_TABLES[:1] + ("misalignment_pooled",), "misalignment", _nothing, _build_misalignment),
    "fig_eigenfilters": Target(
        "Top eigenvectors of the pooled filter covariance beside those of the image-patch covariance.",
        ("eigenfilters",), "eigenfilters", _needs_conv, _build_eigenfilters),
    "fig_transfer_function": Target(
        "The transfer function f(σ) of the first layer after each checkpoint epoch, random and real labels.",
        STATS_TABLES[1:2], "transfer_function", _nothing, _build_transfer_function),
    "fig_gaussian_init": Target(
        "Downstream training from scratch, pre-trained, pre-trained without rescaling and the first-layer Gaussian approximation.",
        FINETUNE_TABLES, "transfer_summary", _needs_variants(variants.PRETRAINED, variants.GAUSSIAN), _build_gaussian_init),
    "fig_layerwise": Target(
        "The first k layers constructed layer by layer from data covariances (f estimated from a pre-trained network, or parametric), k = 0..K.",
        FINETUNE_TABLES, "depth_transfer", _needs_variants(families=("layerwise",)),
        _build_depth(("layerwise", "covariance"))),
    "fig_specialization": Target(
        "Per-layer ReLU statistics across the switch from upstream to downstream training; widened upper layers as the remedy.",
        FINETUNE_TABLES + STATS_TABLES[2:], "specialization", _specialization_needs, _build_specialization),
    "fig_transfer_map": Target(
        "Positive and negative transfer over init scale × number of downstream classes (steps-to-target ratio).",
        FINETUNE_TABLES, "transfer_map", _needs_random_tasks, _build_transfer_map,
        options=_target_accuracy_of_first),
    "q_augmentation": Target(
        "Reviewers: does data augmentation (random crops and flips) change the alignment?",
        STATS_TABLES[:1] + ("misalignment_pooled",), "misalignment", _nothing, _build_misalignment),
    "q_kernel_size": Target(
        "Reviewers: does a larger kernel raise the misalignment?",
        STATS_TABLES[:2] + ("misalignment_pooled",), "kernel_size", _needs_cnn2, _build_kernel_size),
    "q_last_layers": Target(
        "Reviewers: transferring only the last k layers against only the first k.",
        FINETUNE_TABLES, "depth_transfer", _needs_variants(families=("first", "last")),
        _build_depth(("first", "last"))),
    "q_covariance_init": Target(
        "Reviewers: weights built from the data covariance alone (no training) as an initialization.",
        FINETUNE_TABLES, "depth_transfer", _needs_variants(families=("covariance",)),
        _build_depth(("covariance",))),
}


# ----------------------------------------------------------------- plan helpers


def configured(config: dict) -> list[str]:
    """Names of the targets the config defines, in TARGETS order."""
    chosen = config.get("targets") or {}
    return [name for name in TARGETS if name in chosen]


def experiments(config: dict, name: str) -> list[str]:
    """The experiments a target combines; a clear error when it is not configured."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; valid: {', '.join(TARGETS)}")
    entry = (config.get("targets") or {}).get(name)
    if entry is None:
        raise ValueError(
            f"target {name} is not configured: add targets.{name}.experiments to the config "
            "(see configs/paper-cifar10.yaml and docs/RESULTS.md)"
        )
    return list(entry["experiments"])


def problems(config: dict) -> list[str]:
    """What the configured targets need but their experiments lack (for config checks)."""
    found = []
    for name in configured(config):
        for exp in config["targets"][name]["experiments"]:
            where = f"targets.{name}.experiments"
            if exp not in config["experiments"]:
                found.append(f"{where}: {exp!r} is not an experiment (defined: {', '.join(config['experiments'])})")
                continue
            found += [f"{where}: {exp!r} {p}" for p in TARGETS[name].requires(config, exp)]
    return found


def table_inputs(config: dict, name: str) -> dict[str, list[str]]:
    """Per table kind, the per-experiment table files a target reads."""
    exps = experiments(config, name)
    return {kind: [plan.path("table", exp=exp, table=kind) for exp in exps] for kind in TARGETS[name].tables}


def experiment_info(config: dict, name: str) -> dict[str, dict]:
    """Settings of each experiment of a target that its table carries as columns."""
    info = {}
    for exp in experiments(config, name):
        entry = plan.experiment(config, exp)
        model = entry["model"]
        augment = entry["pretrain"].get("augment") or {}
        info[exp] = {
            "model": model["arch"] + (f" ×{model['upper_width']:g} upper" if model.get("upper_width", 1) != 1 else "")
            + (f", {model['init']} init" if model.get("init", "he") != "he" else ""),
            "scale_invariant": bool(scale_invariance(model)) and len(entry["init_scales"]) > 1,
            "kernel_size": int(model.get("kernel_size", 3)) if model["arch"] == "cnn2" else 3,
            "augment": ", ".join(f"{k} {v}" for k, v in sorted(augment.items()) if v) or "none",
            "from_labels": plan.from_labels(config, exp) if plan.has_finetune(config, exp) else entry["pretrain"]["labels"][0],
            "target_accuracy": plan.target_accuracy(config, exp) if plan.has_finetune(config, exp) else None,
        }
    return info


def target_files(config: dict, name: str) -> list[str]:
    experiments(config, name)  # raises when not configured
    return [plan.path("target_table", target=name), plan.path("target_figure", target=name)]


def all_target_files(config: dict) -> list[str]:
    return [f for name in configured(config) for f in target_files(config, name)]


# ----------------------------------------------------------------- building


def combine(name: str, tables: dict[str, pd.DataFrame], info: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tidy table, the table the figure is drawn from) of a target. In the figure, an
    experiment whose init scales a batch-norm network divides out is named as such."""
    table, figure_table = TARGETS[name].build(tables, info)
    ablations = {exp: f"{exp} (batch norm: init scale acts through the head only)"
                 for exp, entry in info.items() if entry.get("scale_invariant")}
    if ablations and "experiment" in figure_table.columns:
        figure_table = figure_table.assign(experiment=figure_table["experiment"].replace(ablations))
    return table, figure_table


def refuse_unknown_target(name: str, known: Iterable[str]) -> list:
    """What a name on the command line that is neither a rule nor a file gets: a
    ValueError with the nearest target names and the list (Snakemake's own message is
    "No rule to produce NAME"). An existing file of that name is no target: nothing."""
    if os.path.exists(name):
        return []
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ValueError(
        f"{name!r} is no target of this workflow: {hint}The named targets are {', '.join(known)} "
        "(README: The paper's experiments); a file under results/ is a target by its path"
    )
