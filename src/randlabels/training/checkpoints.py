"""The checkpoint and initialization files: what a pre-training and an initialization
write, and how their readers check them.

A checkpoint set holds one run's states at its checkpoint epochs, an initialization
one state that fine-tuning starts from; both record the model spec, the input shape,
the number of classes, the run they belong to (:mod:`randlabels.identity`) and the
writer's provenance. They are written through :func:`randlabels.io.save_torch` and read
weights-only; a recorded own-model factory is only built when the config names the
same model (:func:`buildable_spec`): files run no code.
"""

from __future__ import annotations

from randlabels import provenance
from randlabels.errors import InputFileError
from randlabels.identity import expect_identity
from randlabels.io import load_torch, save_torch
from randlabels.models.architectures import is_factory

CHECKPOINT_FORMAT = "randlabels-checkpoints/1"
INIT_FORMAT = "randlabels-init/1"


def checkpoint_fields(
    *, spec, input_shape, num_classes, init_scale, seed, labels, states, diverged, experiment: str | None = None
) -> dict:
    """The arguments of :func:`save_checkpoints` as plain values (what a weights-only
    load accepts: no numpy scalars, no other objects); packed bundles hold these too.

    ``experiment``, ``labels``, ``init_scale`` and ``seed`` are the run's identity,
    which readers check (:func:`read_checkpoints`); the workflow always gives the
    experiment, a notebook may leave it out.
    """
    return {
        "experiment": None if experiment is None else str(experiment),
        "spec": dict(spec),
        "input_shape": [int(n) for n in input_shape],
        "num_classes": int(num_classes),
        "init_scale": float(init_scale),
        "seed": int(seed),
        "labels": str(labels),
        "states": {int(e): s for e, s in states.items()},
        "diverged": bool(diverged),
    }


def checkpoint_identity(data: dict) -> dict:
    """The run a checkpoint set (or a bundle's entry) was written for (see
    :mod:`randlabels.identity`); ``None`` for what it does not record."""
    return {key: data.get(key) for key in ("experiment", "labels", "init_scale", "seed")}


def save_checkpoints(path, **fields) -> None:
    """Write the checkpoint set of one pre-training run (epoch → state dict); the
    keyword arguments are those of :func:`checkpoint_fields`, plus the writer's
    ``"provenance"`` (:func:`randlabels.provenance.stamp`, plain str values)."""
    save_torch({"format": CHECKPOINT_FORMAT, **checkpoint_fields(**fields), "provenance": provenance.stamp()}, path)


def buildable_spec(data: dict, path, configured: dict | None) -> dict:
    """The model spec recorded in a checkpoint or initialization file, if it may be built.

    Files run no code: a spec naming a factory (an own model, ``module:function``) is
    only built when it equals ``configured``, the spec the config gives this job's
    experiment; otherwise the file is refused before anything is imported. Built-in
    architectures are returned as recorded.
    """
    spec = data["spec"]
    if is_factory(spec.get("arch")) and spec != configured:
        raise InputFileError(
            path,
            f"its model names the factory {spec['arch']!r} with {spec}, but the config's model is "
            f"{configured}; a file's own-model factory is only called when the config names the "
            "same model (files run no code): rerun the stage that wrote it",
        )
    return spec


def read_checkpoints(path, expect: dict | None = None) -> dict:
    """Load a checkpoint set, checking that it is one and, given ``expect`` (an
    identity, see :func:`randlabels.identity.expected`), that it was written for that
    run: a set copied over another run's is refused naming both."""
    return _read(path, CHECKPOINT_FORMAT, "checkpoint set", checkpoint_identity, expect)


def save_init(
    path,
    *,
    spec,
    input_shape,
    num_classes,
    state,
    description: str,
    source_diverged: bool = False,
    experiment: str | None = None,
    init: str | None = None,
    init_scale: float | None = None,
    seed: int | None = None,
) -> None:
    """Write an initialization checkpoint (consumed by fine-tuning).

    ``source_diverged``: built from a pre-training that diverged (from its last finite
    checkpoint); fine-tuning carries the flag into its table. ``experiment``, ``init``
    (the variant it is, e.g. ``gaussian``, ``layerwise2``), ``init_scale`` and
    ``seed`` are its identity, checked by :func:`read_init` (the workflow gives all).
    The file also holds the writer's ``"provenance"`` (:mod:`randlabels.provenance`).
    """
    save_torch(
        {
            "format": INIT_FORMAT,
            "experiment": None if experiment is None else str(experiment),
            "init": None if init is None else str(init),
            "init_scale": None if init_scale is None else float(init_scale),
            "seed": None if seed is None else int(seed),
            "spec": dict(spec),
            "input_shape": [int(n) for n in input_shape],
            "num_classes": int(num_classes),
            "state": state,
            "description": str(description),
            "source_diverged": bool(source_diverged),
            "provenance": provenance.stamp(),
        },
        path,
    )


def init_identity(data: dict) -> dict:
    """The run an initialization was written for; ``None`` for what it does not record."""
    return {key: data.get(key) for key in ("experiment", "init", "init_scale", "seed")}


def read_init(path, expect: dict | None = None) -> dict:
    """Load an initialization checkpoint, checking that it is one and, given
    ``expect``, that it was written for that run (see :func:`read_checkpoints`)."""
    return _read(path, INIT_FORMAT, "initialization", init_identity, expect)


def _read(path, file_format: str, what: str, identity, expect: dict | None) -> dict:
    """A file of ``file_format`` (else refused as not a randlabels ``what``), checked
    against ``expect`` through ``identity`` (the run it records)."""
    data = load_torch(path)
    if not isinstance(data, dict) or data.get("format") != file_format:
        raise InputFileError(path, f"not a randlabels {what} (format {file_format})")
    if expect is not None:
        expect_identity(identity(data), expect, path)
    return data
