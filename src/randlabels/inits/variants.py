"""Initialization variants that fine-tuning starts from: their names, the file each
starts from, and how its initial state is built. The one owner of the concept: rules,
scripts, the config check, paper targets and plots ask this module.

Fixed variants:

- scratch: a fresh He × init_scale initialization;
- pretrained: the pre-trained weights, each weight tensor rescaled to the ℓ2 norm it
  had at initialization (biases and batch-norm tensors kept as trained);
- pretrained_norescale: the pre-trained weights as they are;
- gaussian: a fresh initialization whose chosen layer holds filters sampled from the
  Gaussian fitted to the pre-trained filters (rule gaussian_init).

Families with a depth k ≥ 1:

- first{k} / last{k}: the first / last k non-head layer groups taken from the
  pre-trained network, rescaled as in pretrained; everything else fresh;
- layerwise{k} / covariance{k}: the first k layers constructed from data covariances,
  with f(σ) estimated from a pre-trained network / parametric (rule construct_init).

The classifier (head) is always this task's fresh one, except that pretrained and
pretrained_norescale keep the pre-trained head when ``finetune.reset_head`` is false.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names and what each needs are read without torch (Snakefile, plots)
    from torch import nn

SCRATCH, PRETRAINED, PRETRAINED_NORESCALE, GAUSSIAN = "scratch", "pretrained", "pretrained_norescale", "gaussian"
FIXED = (SCRATCH, PRETRAINED, PRETRAINED_NORESCALE, GAUSSIAN)
DEPTH_FAMILIES = ("first", "last", "layerwise", "covariance")
FAMILIES = FIXED + DEPTH_FAMILIES

#: The file each family starts from (a key of plan.PATHS), None for scratch.
SOURCE = {
    "scratch": None,
    "pretrained": "checkpoints",
    "pretrained_norescale": "checkpoints",
    "first": "checkpoints",
    "last": "checkpoints",
    "gaussian": "gaussian_init",
    "layerwise": "constructed_init",
    "covariance": "constructed_init",
}
#: What the construction of a constructed family reads besides the data: layerwise
#: estimates f(σ) from the pre-trained network, covariance needs no training.
CONSTRUCT_SOURCE = {"layerwise": "checkpoints", "covariance": None}
CONSTRUCTED = tuple(CONSTRUCT_SOURCE)

#: Wildcard patterns: any variant name; the constructed ones (rule construct_init).
PATTERN = "|".join(FIXED) + "|(?:" + "|".join(DEPTH_FAMILIES) + r")\d+"
CONSTRUCT_PATTERN = "(?:" + "|".join(CONSTRUCTED) + r")\d+"


@dataclass(frozen=True)
class Variant:
    """A parsed variant name: ``family`` and, for a depth family, ``depth`` (k)."""

    name: str
    family: str
    depth: int | None = None

    @property
    def source(self) -> str | None:
        """The kind of file (plan.PATHS key) this variant starts from."""
        return SOURCE[self.family]

    @property
    def partial(self) -> bool:
        """Whether it transfers only some pre-trained layers (first{k}, last{k})."""
        return self.family in ("first", "last")


def parse(name: str) -> Variant:
    """Variant('layerwise2', 'layerwise', 2) for 'layerwise2'; ValueError for a bad name."""
    if name in FIXED:
        return Variant(name, name)
    for family in DEPTH_FAMILIES:
        rest = name[len(family):]
        if name.startswith(family) and rest.isdigit() and int(rest) >= 1 and rest[0] != "0":
            return Variant(name, family, int(rest))
    raise ValueError(
        f"unknown variant {name!r}; valid: {', '.join(FIXED)}, "
        f"or {', '.join(f + 'K' for f in DEPTH_FAMILIES)} with a depth K ≥ 1 (e.g. first2)"
    )


def transferred_layers(variant: str, model: "nn.Module") -> list[list[str]]:
    """The layer groups (transfer.layer_groups) a first{k} / last{k} variant takes from
    the pre-trained network, in forward order; ValueError if the model has fewer than k."""
    from randlabels.inits.pretrained import layer_groups

    parsed = parse(variant)
    if not parsed.partial:
        raise ValueError(f"variant {variant!r} does not transfer single layers (only firstK and lastK do)")
    groups = layer_groups(model)
    k = parsed.depth
    if k > len(groups):
        raise ValueError(
            f"variant {variant!r} transfers {k} layers, but the model has only "
            f"{len(groups)} non-head layers (layer groups)"
        )
    return groups[:k] if parsed.family == "first" else groups[len(groups) - k :]


def with_fresh_head(state: dict, fresh: dict, head: str) -> dict:
    """``state`` with the classifier taken from ``fresh`` (this task's class count)."""
    return {k: fresh[k] if k == head or k.startswith(head + ".") else v for k, v in state.items()}


def initial_state(
    variant: str, model: "nn.Module", source, expect: dict | None, reset_head: bool,
    log: logging.Logger | None = None,
) -> tuple[dict, bool]:
    """The state ``model`` starts fine-tuning from as ``variant``, and whether its source
    came from a diverged pre-training.

    ``model`` holds the fresh initialization (scratch); ``source`` is the file of
    :attr:`Variant.source` (a checkpoint set or an initialization), checked against
    ``expect`` (identity.expected) so that a file of another run is refused.
    """
    from randlabels.inits.pretrained import clone_state, partial_state, transferred_state
    from randlabels.models.networks import head_prefix
    from randlabels.training.checkpoints import read_checkpoints, read_init

    parsed = parse(variant)
    fresh = clone_state(model)
    if parsed.source is None:
        return fresh, False
    if parsed.source == "checkpoints":
        checkpoints = read_checkpoints(source, expect=expect)
        if checkpoints["diverged"] and log is not None:
            log.warning("%s: pre-training diverged; transferring its last finite checkpoint", source)
        states = checkpoints["states"]
        init_state, trained_state = states[0], states[max(states)]
        if parsed.partial:  # only some layers, rescaled; the rest (and the head) fresh
            groups = transferred_layers(variant, model)
            if log is not None:
                log.info("transferring %s pre-trained layer(s): %s", variant, ", ".join(g[0] for g in groups))
            return partial_state(init_state, trained_state, fresh, groups, rescale=True), bool(checkpoints["diverged"])
        state = transferred_state(
            init_state=init_state, trained_state=trained_state, fresh_state=fresh, head=head_prefix(model),
            rescale=parsed.family == "pretrained", reset_head=reset_head,
        )
        return state, bool(checkpoints["diverged"])
    # Built for the upstream class count: the head is this task's fresh one.
    init = read_init(source, expect=expect)
    return with_fresh_head(init["state"], fresh, head_prefix(model)), bool(init.get("source_diverged", False))
