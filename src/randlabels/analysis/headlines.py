"""The headline numbers of each experiment: results/SUMMARY.md and the report's front page.

Read from the experiment tables on disk when a run ends (the Snakefile's ``onsuccess``),
so that what a run found is on screen without opening a figure:

* misalignment of the first measured layer at the last epoch, against the data basis
  and a random basis (the paper's claim 1: small against the data basis only), per
  seed and with Σw pooled over the seeds;
* the downstream speed-up of each initialization over training from scratch (claim 2);
* the fraction of dead ReLU units at the last epoch (the paper's specialization).

Each number is a mean (speed-ups: a median) over the seeds, with their count and how
many of them collapsed; a diverged run is left out.
Experiments without tables yet are listed as such; nothing here fails a run.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from randlabels import provenance
from randlabels.inits import variants
from randlabels.io import atomic_output, read_table
from randlabels.workflow import plan

SUMMARY = "SUMMARY.md"  # in the results folder
FRONT_PAGE = "report_front.rst"  # the report's front page, in the results folder
TABLES = ("misalignment", "misalignment_pooled", "transfer_summary", "activations")


def _number(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.3g}"


def _flagged(table: pd.DataFrame, flag: str) -> pd.Series:
    if flag not in table.columns:
        return pd.Series(False, index=table.index)
    return table[flag].astype(str).str.lower().isin(["true", "1"])


def _collapsed(group: pd.DataFrame) -> str:
    """"; N collapsed" when N of the group's seeds collapsed (learned nothing; kept, as
    in the figures, and said)."""
    count = group.loc[_flagged(group, "collapsed"), "seed"].nunique()
    return f"; {count} collapsed" if count else ""


def _last_epoch(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of each label kind's last epoch (of runs that did not diverge)."""
    table = table[~_flagged(table, "diverged")]
    if table.empty:
        return table
    last = table.groupby("labels")["epoch"].transform("max")
    return table[table["epoch"] == last]


def misalignment_lines(table: pd.DataFrame) -> list[str]:
    """Per label kind and init scale: mean misalignment against the data and a random basis."""
    rows = _last_epoch(table)
    if rows.empty:
        return []
    layer = rows["layer"].iloc[0]
    rows = rows[rows["layer"] == layer]
    lines = []
    for (labels, scale), group in rows.groupby(["labels", "init_scale"], sort=True):
        by_basis = {basis: part.groupby("seed")["misalignment"].mean().dropna() for basis, part in group.groupby("basis")}
        data, rand = by_basis.get("data", pd.Series(dtype=float)), by_basis.get("random", pd.Series(dtype=float))
        seeds = group["seed"].nunique()
        undefined = f"; undefined for {seeds - len(data)} seeds" if len(data) < seeds else ""
        lines.append(
            f"misalignment of {layer} at epoch {group['epoch'].iloc[0]:g}, {labels} labels, init scale {scale:g}: "
            f"{_number(data.mean() if len(data) else math.nan)} against the data basis, "
            f"{_number(rand.mean() if len(rand) else math.nan)} against a random basis "
            f"(mean of {len(data)} seeds{undefined}{_collapsed(group)})"
        )
    return lines


def pooled_lines(table: pd.DataFrame) -> list[str]:
    """Per label kind and init scale: the misalignment of Σw pooled over the seeds, at
    the last epoch, of the first layer pooled; and of the change from initialization
    where the table has it (``of``)."""
    rows = table.dropna(subset=["misalignment"])
    if rows.empty:
        return []
    rows = rows[rows["epoch"] == rows.groupby("labels")["epoch"].transform("max")]
    rows = rows[rows["layer"] == rows["layer"].iloc[0]]
    of = rows["of"] if "of" in rows.columns else pd.Series("weights", index=rows.index)
    lines = []
    for (labels, scale), group in rows.groupby(["labels", "init_scale"], sort=True):
        value = {(kind, basis): part["misalignment"].iloc[0]
                 for (kind, basis), part in group.groupby([of[group.index], "basis"])}
        change = (f"; of the change from initialization: {_bases(value, 'change')}"
                  if ("change", "data") in value else "")
        lines.append(
            f"misalignment of {group['layer'].iloc[0]} pooled over {int(group['seeds'].iloc[0])} seeds (one Σw) at "
            f"epoch {group['epoch'].iloc[0]:g}, {labels} labels, init scale {scale:g}: {_bases(value, 'weights')}{change}"
        )
    return lines


def _bases(value: dict, of: str) -> str:
    """The data- and random-basis scores of one ``of`` (weights | change)."""
    return (f"{_number(value.get((of, 'data'), math.nan))} against the data basis, "
            f"{_number(value.get((of, 'random'), math.nan))} against a random basis")


def speedup_lines(table: pd.DataFrame) -> list[str]:
    """Per task and init scale: each variant's median speed-up over scratch."""
    rows = table[table["variant"] != variants.SCRATCH]
    lines = []
    for (task, scale), group in rows.groupby(["task", "init_scale"], sort=True):
        parts = []
        for variant, runs in group.groupby("variant", sort=False):
            speedups = pd.to_numeric(runs["speedup"], errors="coerce").dropna()
            value = f"×{speedups.median():.2f}" if len(speedups) else "not reached"
            parts.append(f"{variant} {value} ({len(speedups)}/{len(runs)} seeds)")
        target = group["target"].iloc[0]
        lines.append(
            f"speed-up over scratch to accuracy {target:g}, task {task}, init scale {scale:g}: "
            f"{', '.join(parts)} (median over the seeds that reached it)"
        )
    return lines


def dead_unit_lines(table: pd.DataFrame) -> list[str]:
    """Per label kind and init scale: mean fraction of dead units of each ReLU."""
    rows = _last_epoch(table)
    lines = []
    for (labels, scale), group in rows.groupby(["labels", "init_scale"], sort=True):
        dead = group.groupby("module", sort=False)["frac_dead"].mean()
        parts = ", ".join(f"{module} {100 * value:.1f} %" for module, value in dead.items())
        lines.append(
            f"dead ReLU units at epoch {group['epoch'].iloc[0]:g}, {labels} labels, init scale {scale:g}: {parts} "
            f"(mean of {group['seed'].nunique()} seeds{_collapsed(group)})"
        )
    return lines


_LINES = {
    "misalignment": misalignment_lines,
    "misalignment_pooled": pooled_lines,
    "transfer_summary": speedup_lines,
    "activations": dead_unit_lines,
}


def experiment_lines(exp: str, results: str | os.PathLike = plan.RESULTS) -> tuple[list[str], set[tuple]]:
    """The headline lines of ``exp`` from its tables under ``results``, and the code
    stamps ((version, commit, dirty, libraries, machine)) those tables record."""
    lines, code, lineages = [], set(), []
    for name in TABLES:
        path = Path(results) / Path(plan.path("table", exp=exp, table=name)).relative_to(plan.RESULTS)
        if not path.exists():
            continue
        table = read_table(path)
        stamp = provenance.read(path)
        code.add((stamp.get("randlabels_version", "?"), stamp.get("git_commit", "?"), stamp.get("git_dirty", "?"),
                  stamp.get("libraries", "libraries not recorded"), stamp.get("machine", "machine not recorded")))
        lineages.append(f"{name}.tsv {stamp.get('lineage_sha256', '?')[:12]}")
        if not table.empty:
            lines.extend(_LINES[name](table))
    if lineages:
        lines.append("lineage hashes of the tables, over their settings, all upstream settings and the raw data "
                     f"(provenance lineage_sha256, first 12 digits): {', '.join(lineages)}")
    return lines, code


def _code_line(code: set[tuple]) -> str:
    if not code:
        return "Code: no tables yet."
    shown = []
    for version, commit, dirty, libraries, machine in sorted(code):
        changes = " with uncommitted changes" if dirty == "true" else ""
        shown.append(f"randlabels {version}, commit {commit[:12]}{changes} ({libraries}; {machine})")
    return "Code, as the tables record it: " + "; ".join(shown) + "."


def summarize(experiments, results: str | os.PathLike = plan.RESULTS) -> dict:
    """``{"experiments": {exp: [line, ...]}, "code": line}`` for ``experiments``."""
    sections, code = {}, set()
    for exp in experiments:
        lines, stamps = experiment_lines(exp, results)
        sections[exp] = lines
        code |= stamps
    return {"experiments": sections, "code": _code_line(code)}


def _sections(summary: dict, heading) -> list[str]:
    """Each experiment's heading (``heading(exp)``) and its lines as a bullet list, then
    the code line: the body both formats share (the bullets are Markdown and RST)."""
    out = []
    for exp, lines in summary["experiments"].items():
        out += [heading(exp), ""]
        out += [f"- {line}" for line in lines] or ["- no tables yet"]
        out.append("")
    return out + [summary["code"], ""]


def markdown(summary: dict) -> str:
    head = ["# Summary", "", "The headline numbers of each experiment (details: results/report.html).", ""]
    return "\n".join(head + _sections(summary, lambda exp: f"## {exp}"))


def front_page(summary: dict, description: str) -> str:
    """The report's front page (reStructuredText): ``description``, then the summary."""
    head = [description.rstrip(), "", "Summary", "-------", ""]
    return "\n".join(head + _sections(summary, lambda exp: f"**{exp}**"))


def write(experiments, description: str, results: str | os.PathLike = plan.RESULTS) -> str:
    """Write SUMMARY.md and the report's front page under ``results``; returns the
    markdown, for printing."""
    summary = summarize(experiments, results)
    text = markdown(summary)
    for name, content in ((SUMMARY, text), (FRONT_PAGE, front_page(summary, description))):
        with atomic_output(Path(results) / name) as tmp:
            tmp.write_text(content, encoding="utf-8")
    return text
