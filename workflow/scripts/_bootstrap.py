"""Put the project's src/ on sys.path, so rule scripts import the library from this
checkout whether they run in the project's venv, a conda env or a cluster job.

Snakemake adds this folder to sys.path of every rule script; each script imports this
module before the library.
"""

import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
