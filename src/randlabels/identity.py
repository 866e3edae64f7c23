"""Which run a results file belongs to, recorded in the file and checked by its readers.

A checkpoint set, an initialization, a packed bundle and a statistics file each
record the run they were written for: ``experiment``, ``labels`` (the pre-training's
label kind), ``init`` (an initialization's variant, e.g. ``gaussian`` or
``layerwise2``), ``init_scale`` and ``seed``. Their path says the same thing, but a
path is only a name: a file copied or moved over another one keeps its own record.
Every reader in the workflow passes what its rule expects (:func:`expected`, from
the job's wildcards, or for a list of inputs from each file's own path,
:func:`path_wildcards`) and :func:`expect_identity` refuses a file written for
another run with an :class:`~randlabels.errors.InputFileError` that names the file
and both identities, before anything is computed from it. A settings hash can join
the keys once files record one.
"""

from __future__ import annotations

import os
import re

from randlabels.errors import InputFileError

# The identity keys, in the order messages show them.
KEYS = ("experiment", "labels", "init", "init_scale", "seed")
# A job's wildcard → the identity key it gives.
_FROM_WILDCARD = {"exp": "experiment", "labels": "labels", "construct": "init", "scale": "init_scale", "seed": "seed"}
_SHOWN = {"init_scale": "scale"}  # as in the paths: .../scale0.5/...


def _label(key: str, value) -> str:
    """A value as the paths spell it: an init scale as its path label (``f"{s:g}"``, as
    :func:`randlabels.workflow.plan.scale_label`), a seed as an integer, the rest as text."""
    if key == "init_scale":
        return f"{float(value):g}"
    if key == "seed":
        return str(int(value))
    return str(value)


def expected(wildcards, **extra) -> dict:
    """The identity a job expects of its inputs: its wildcards (``exp``, ``labels``,
    ``construct``, ``scale``, ``seed``; others are ignored) under their identity names,
    updated with ``extra`` (e.g. ``labels=...`` for the pre-training fine-tuning
    transfers from, ``init="gaussian"``). ``wildcards``: Snakemake's, a dict, or any
    object with those attributes."""
    if hasattr(wildcards, "items"):
        items = dict(wildcards.items())
    else:
        items = dict(vars(wildcards))
    found = {_FROM_WILDCARD[name]: value for name, value in items.items() if name in _FROM_WILDCARD}
    found.update(extra)
    return found


def path_wildcards(template: str, path: str | os.PathLike) -> dict:
    """The wildcards ``path`` has in ``template`` (a ``plan.PATHS`` entry such as
    ``results/{exp}/stats/{labels}/scale{scale}/seed{seed}.h5``); ValueError when it
    does not have that form. A leading folder (an absolute path) is allowed."""
    pattern, position = [], 0
    for match in re.finditer(r"\{(\w+)\}", template):
        pattern.append(re.escape(template[position : match.start()]))
        pattern.append(f"(?P<{match.group(1)}>[^/]+)")
        position = match.end()
    pattern.append(re.escape(template[position:]))
    found = re.search(r"(?:^|/)" + "".join(pattern) + "$", os.fspath(path))
    if found is None:
        raise ValueError(f"{path}: not a path of the form {template}")
    return found.groupdict()


def show(identity: dict) -> str:
    """``experiment=tiny labels=random scale=0.5 seed=0``: the keys of :data:`KEYS` in
    ``identity``, in that order; a key the file does not record is shown as ``?``."""
    parts = []
    for key in KEYS:
        if key in identity:
            value = identity[key]
            parts.append(f"{_SHOWN.get(key, key)}={'?' if value is None else _label(key, value)}")
    return " ".join(parts)


def expect_identity(recorded: dict, expected: dict, path: str | os.PathLike) -> None:
    """Refuse a file whose ``recorded`` identity differs from the ``expected`` one.

    Only the keys of ``expected`` are compared; one the file does not record (written
    by an older version of the workflow) counts as a difference. Raises
    :class:`InputFileError` naming ``path`` and both identities.
    """
    differ = [
        key for key in expected
        if recorded.get(key) is None or _label(key, recorded[key]) != _label(key, expected[key])
    ]
    if not differ:
        return
    written = {key: recorded.get(key) for key in expected}
    raise InputFileError(
        path,
        f"written for {show(written)}, but this rule expects {show(expected)} "
        f"({', '.join(_SHOWN.get(k, k) for k in differ)} differ{'s' if len(differ) == 1 else ''}): "
        "the file belongs to another run (copied or moved here?); delete it and rerun the "
        "workflow, which rewrites it",
    )
