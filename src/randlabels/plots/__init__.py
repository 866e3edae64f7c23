"""Figures of the reproduction, one module per figure, and the registry of the figures
drawn for every experiment.

Each module (``misalignment``, ``misalignment_change``, ``transfer_function``, ``learning_curves``,
``transfer_summary``, ``eigenfilters``, and for the paper's named targets
``depth_transfer``, ``transfer_map``, ``specialization``, ``kernel_size``) exposes a
single ``plot(table, out_path, ...)`` that reads a tidy pandas table and writes one
PNG. Keeping one figure per module lets the workflow re-render only the figure whose
code changed; the shared look lives in :mod:`randlabels.plots.style`. Nothing is
imported here so that importing the package stays cheap and never pulls in training
code.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Figure:
    """A per-experiment figure: the module ``randlabels.plots.NAME`` draws the
    experiment's table ``table``; each of ``extra`` (plot keyword → table name) is
    read and passed too. An experiment gets the figure when it has these tables."""

    table: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def tables(self) -> tuple[str, ...]:
        return (self.table, *self.extra.values())


#: The figures of results/EXP/figures/, by name (= module); the rule ``plot`` draws
#: them all, and workflow/report/figure.rst holds their captions.
FIGURES: dict[str, Figure] = {
    "misalignment": Figure("misalignment", extra={"pooled": "misalignment_pooled"}),
    "misalignment_change": Figure("misalignment_pooled"),
    "transfer_function": Figure("transfer_function"),
    "eigenfilters": Figure("eigenfilters"),
    "learning_curves": Figure("finetune_curves"),
    "transfer_summary": Figure("transfer_summary"),
}


def figure_module(name: str) -> str:
    """The dotted name of the module that draws figure ``name``. Imported by this name
    at run time, so a rule lists it among its code inputs itself (randlabels.workflow.codedeps)."""
    return f"{__name__}.{name}"
