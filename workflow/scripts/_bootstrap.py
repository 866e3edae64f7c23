"""Put the project's src/ first on sys.path, so rule scripts import the library from
this checkout whether they run in the project's venv, a conda env or a cluster job.

Snakemake adds this folder to sys.path of every rule script; each script imports this
module before the library. First, not merely present: Snakemake's script preamble
appends the parent's sys.path, and an environment shared by several clones may carry
another clone's src/ (an editable install, PYTHONPATH) ahead of it. common.smk runs
this file too, for the Snakefile's own imports.
"""

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def put_first(src: Path) -> None:
    """Make ``src`` sys.path[0]; refuse if ``randlabels`` was already imported from
    elsewhere (its modules would silently mix with this checkout's)."""
    loaded = sys.modules.get("randlabels")
    origin = getattr(loaded, "__file__", None)
    if loaded is not None and (origin is None or src not in Path(origin).resolve().parents):
        raise ImportError(
            f"randlabels was imported from {origin} before {src} was put on sys.path; "
            "this checkout's library must be the one that runs (import _bootstrap first)"
        )
    sys.path[:] = [entry for entry in sys.path if not _same(entry, src)]
    sys.path.insert(0, str(src))


def _same(entry: str, src: Path) -> bool:
    try:
        return Path(entry or ".").resolve() == src
    except OSError:
        return False


put_first(SRC)
