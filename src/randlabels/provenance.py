"""Provenance stamps: which code, at which commit, with which settings wrote a file.

Every file the library writes (statistics, dataset and split HDF5 files as root
attributes; checkpoint sets, initializations and packed bundles under the key
``"provenance"``; tables as leading ``# key: value`` lines) carries :func:`stamp`:

``randlabels_version``
    the package version that ran.
``git_commit``, ``git_dirty``
    the commit of the git checkout holding the imported package, and whether its
    tracked files had uncommitted changes ("true"/"false"); both "unknown" when the
    package is not in a git checkout or git is missing or fails (never an error:
    a job must not fail for lack of git).
``libraries``
    the versions of Python and of the packages whose numerics shape the results
    (numpy, torch, torchvision), e.g. "python 3.11.2, numpy 2.4.6, torch 2.14.1,
    torchvision 0.29.1"; a package that is not installed reads "absent". The same
    code and settings give other numbers under another torch or numpy (kernels,
    reductions, LAPACK), so a result's stamp names them.
``machine``
    the processor that ran: its architecture and, on Linux, /proc/cpuinfo's model
    name (e.g. "x86_64, AMD EPYC"). CPU kernels are chosen by processor (AVX2 or
    AVX-512), so the same libraries on another machine may give other bits too.
``rule``, ``settings_sha256``
    the workflow rule that wrote the file and :func:`settings_hash` of its name and
    params, as recorded by :func:`record_job`; "none" for library use outside a job.
``lineage_sha256``
    :func:`lineage_hash`: the settings of this file and of everything upstream of it
    (its job's settings hash and wildcards, the lineage hashes of the stamped
    files the job read, and a prepared dataset's raw-data checksum:
    :func:`record_source`), so two files with equal lineage hashes were made with the
    same settings from the same raw data. An aggregate table's own settings
    are often none (every experiment's ``misalignment.tsv`` has the same
    ``settings_sha256``); its lineage tells the experiments and seeds apart. "none"
    for library use outside a job.

So a result found later can be traced to the code and the settings that made it.
Only the standard library is imported here, so file formats may depend on this.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path, PurePath
from typing import Any

import randlabels

KEYS = (
    "randlabels_version", "git_commit", "git_dirty", "libraries", "machine", "rule", "settings_sha256", "lineage_sha256",
)
#: the packages named in a stamp's ``libraries``, after Python.
LIBRARIES = ("numpy", "torch", "torchvision")
UNKNOWN = "unknown"
NONE = "none"
#: an input's contribution to a lineage when its stamp cannot be read (its reader says why)
UNREADABLE = "unreadable"
GIT_TIMEOUT_S = 10

# Once a job is recorded: its rule, settings hash, wildcards and the lineage parts of
# what it read (input files' lineages, raw data's checksums), from which stamp() hashes.
_job: dict[str, Any] = {}


def version() -> str:
    """The installed package version (``randlabels.__version__``)."""
    return str(getattr(randlabels, "__version__", UNKNOWN))


@functools.cache
def libraries() -> str:
    """Python's version and those of :data:`LIBRARIES` as installed (their metadata:
    nothing is imported), comma-separated; "absent" for one that is not installed."""
    from importlib import metadata

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    return ", ".join([f"python {platform.python_version()}", *(f"{name} {installed(name)}" for name in LIBRARIES)])


@functools.cache
def machine() -> str:
    """The processor's architecture and model name (/proc/cpuinfo on Linux, else what
    the platform module says; "unknown" where neither says)."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.machine() or UNKNOWN}, {model or platform.processor() or UNKNOWN}"


def package_checkout() -> Path:
    """The folder the imported package's code sits in (src/randlabels → its root)."""
    return Path(randlabels.__file__).resolve().parents[2]


def git_state(root: str | os.PathLike) -> tuple[str, str]:
    """(commit, dirty) of the git checkout at ``root``: dirty is "true" when tracked
    files differ from the commit (untracked files do not count); both "unknown"
    when ``root`` has no .git, git is missing, slow or fails. One git call."""
    root = Path(root)
    if not (root / ".git").exists():
        return UNKNOWN, UNKNOWN
    # Ours, not an inherited GIT_DIR (a git hook's): -C root must decide the repository.
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    try:
        result = subprocess.run(
            # --no-optional-locks: never take the index lock of a tree others work in.
            ["git", "--no-optional-locks", "-C", str(root), "status", "--porcelain=v2", "--branch",
             "--untracked-files=no"],
            capture_output=True, text=True, timeout=GIT_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN, UNKNOWN
    if result.returncode != 0:
        return UNKNOWN, UNKNOWN
    lines = result.stdout.splitlines()
    commit = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), "")
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit):  # "(initial)": no commit yet
        return UNKNOWN, UNKNOWN
    dirty = any(line and not line.startswith("#") for line in lines)
    return commit, "true" if dirty else "false"


@functools.cache
def _code_state() -> tuple[str, str, str]:
    """(version, commit, dirty) of the running code; git runs once per process."""
    return (version(), *git_state(package_checkout()))


def _canonical(value: Any, where: str) -> Any:
    """``value`` as plain JSON values: numpy scalars and arrays, paths, tuples and sets
    made JSON-able; anything else is a TypeError naming ``where``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)  # json writes NaN and Infinity as such, stably
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [_canonical(v, where) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":  # numpy scalar or array
        return _canonical(value.tolist(), where)
    raise TypeError(f"{where}: a {type(value).__qualname__} cannot go into a settings hash; use plain values")


def settings_hash(rule: str, params: Mapping[str, Any]) -> str:
    """sha256 (hex) of canonical JSON (sorted keys, no spaces) of
    ``{"rule": rule, "params": params}``: the same settings give the same hash in any
    key order, any process; it covers the rule name and the params only (not inputs,
    wildcards, resources or the config beyond what the params carry)."""
    payload = {"rule": str(rule), "params": _canonical(dict(params), "params")}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def lineage_hash(settings: str, wildcards: Mapping[str, Any], inputs: Iterable[str]) -> str:
    """sha256 (hex) of canonical JSON of a job's settings hash, its wildcards (which
    run: experiment, seed, ...) and its lineage parts, sorted: the lineage hashes of its
    inputs and the ``"source sha256:..."`` entries of the raw data it read
    (:func:`record_source`). The same parts in any order give the same hash, and a table
    over four seeds another than one over three."""
    payload = {"settings": str(settings), "wildcards": _canonical(dict(wildcards), "wildcards"),
               "inputs": sorted(str(value) for value in inputs)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def input_lineage(path: str | os.PathLike) -> str | None:
    """What an input file adds to its job's lineage: its recorded ``lineage_sha256``
    (for a file stamped before lineages existed, its ``settings_sha256``); None for a
    file the workflow did not write (raw data, code, a folder); :data:`UNREADABLE`
    when its stamp cannot be read, so a lineage never silently leaves an input out
    (the job's own reader of that file then says what is wrong with it)."""
    if not os.path.isfile(path):
        return None
    try:
        recorded = read(path)
    except Exception:  # noqa: BLE001: any damage; the reader of the file reports it
        return UNREADABLE
    return recorded.get("lineage_sha256") or recorded.get("settings_sha256") or None


def record_settings(rule: str, params: Mapping[str, Any], wildcards: Mapping[str, Any] | None = None,
                    inputs: Iterable[str | os.PathLike] = ()) -> str:
    """Record that this process runs ``rule`` with ``params`` for ``wildcards``,
    reading ``inputs``: every file written from now on carries the settings hash and
    the lineage hash (:func:`input_lineage` of each input) in its stamp. Returns the
    settings hash."""
    digest = settings_hash(rule, params)
    upstream = [lineage for lineage in map(input_lineage, dict.fromkeys(map(str, inputs))) if lineage is not None]
    _job.clear()
    _job.update(rule=str(rule), settings_sha256=digest, wildcards=dict(wildcards or {}), inputs=upstream)
    return digest


def record_source(checksum: str) -> None:
    """Record that this job read raw data whose checksum is ``checksum`` (a prepared
    dataset's ``"sha256:..."``): the lineage of every file written from now on folds in
    ``"source " + checksum``, so datasets prepared with the same settings from other
    raw files, and all made from them, have other lineages. Nothing for an empty
    checksum (data generated from its settings) or outside a job."""
    source = f"source {checksum}"
    if checksum and _job and source not in _job["inputs"]:  # a second write of the same data changes nothing
        _job["inputs"].append(source)


def _named(container) -> dict:
    """A Snakemake Namedlist's named entries, or a stand-in namespace's attributes."""
    return dict(container.items()) if hasattr(container, "items") else dict(vars(container))


def _paths(container) -> list[str]:
    """Every path in a job's ``input``: a Snakemake Namedlist (a list), or a stand-in
    namespace whose attributes are paths or lists of them."""
    if container is None:
        return []
    values = list(container) if isinstance(container, (list, tuple)) else list(vars(container).values())
    paths: list[str] = []
    for value in values:
        paths.extend(_paths(value) if isinstance(value, (list, tuple)) else [str(value)])
    return paths


def record_job(job) -> str:
    """:func:`record_settings` for a workflow script's ``snakemake`` object: its rule
    name (``rule``), its named params, its wildcards and its input files. Call it at
    the top of every script."""
    wildcards = getattr(job, "wildcards", None)
    return record_settings(getattr(job, "rule", None) or UNKNOWN, _named(job.params),
                           _named(wildcards) if wildcards is not None else {}, _paths(getattr(job, "input", None)))


def forget_job() -> None:
    """Back to library use: files written from now on carry settings "none"."""
    _job.clear()


def stamp() -> dict[str, str]:
    """The provenance of a file written now (see the module docstring), all str."""
    package_version, commit, dirty = _code_state()
    return {
        "randlabels_version": package_version,
        "git_commit": commit,
        "git_dirty": dirty,
        "libraries": libraries(),
        "machine": machine(),
        "rule": _job.get("rule", NONE),
        "settings_sha256": _job.get("settings_sha256", NONE),
        "lineage_sha256": lineage_hash(_job["settings_sha256"], _job["wildcards"], _job["inputs"]) if _job else NONE,
    }


def stamp_into(attrs: MutableMapping) -> None:
    """Set :func:`stamp` as attributes (an HDF5 file's ``attrs``, a dict)."""
    for key, value in stamp().items():
        attrs[key] = value


# --------------------------------------------------------------------------- tables

_TABLE_LINE = re.compile(r"^# ([A-Za-z0-9_]+): (.*)$")


def table_header() -> str:
    """The stamp as a table's leading comment lines, ``# key: value`` one per key."""
    return "".join(f"# {key}: {' '.join(str(value).split())}\n" for key, value in stamp().items())


def table_header_lines(path: str | os.PathLike) -> dict[str, str]:
    """The leading ``# key: value`` lines of a table (empty for an older table)."""
    found: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for line in handle:
            match = _TABLE_LINE.match(line.rstrip("\r\n"))
            if match is None:
                break
            found[match.group(1)] = match.group(2)
    return found


# --------------------------------------------------------------------------- reading


def read(path: str | os.PathLike) -> dict[str, str]:
    """The stamp recorded in a file the library wrote: an HDF5 file (root attributes),
    a torch file (its ``"provenance"`` entry, read memory-mapped: the weights stay on
    disk) or a table (its leading lines); empty for a file written before stamps
    existed and for any other file (raw data, a zip that is not torch's)."""
    import zipfile

    path = Path(path)
    with open(path, "rb") as handle:
        magic = handle.read(8)
    if magic == b"\x89HDF\r\n\x1a\n":
        import h5py

        with h5py.File(path, "r") as f:
            return {key: _text(f.attrs[key]) for key in KEYS if key in f.attrs}
    if magic.startswith(b"PK\x03\x04"):  # a zip archive (a damaged one raises here)
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                return {}  # numpy's .npz, say
        from randlabels.io import load_torch

        data = load_torch(path, mmap=True)
        recorded = data.get("provenance", {}) if isinstance(data, dict) else {}
        return {str(k): str(v) for k, v in recorded.items()}
    if not magic.startswith(b"# "):
        return {}  # not a stamped table: no need to read on through a binary file for a line end
    return table_header_lines(path)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


__all__ = [
    "KEYS", "LIBRARIES", "UNREADABLE", "forget_job", "git_state", "input_lineage", "libraries", "lineage_hash", "machine",
    "package_checkout", "read", "record_job", "record_settings", "record_source", "settings_hash", "stamp", "stamp_into", "table_header", "table_header_lines", "version",
]
