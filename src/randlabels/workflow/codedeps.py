"""A rule's code dependencies, derived from the imports of its script.

Snakemake's code trigger covers a rule's script, nothing it imports: an edit to the
library reruns a stage only if the library files the stage runs are among its inputs.
Kept by hand, those lists drift; read off the imports, they cannot, and a new module
or sub-package counts from the moment a script (or a module it uses) imports it.

Static reading sees every ``import`` and ``from ... import`` (at any depth, relative
ones too) and ``importlib.import_module`` with a literal name, or with an f-string
whose literal start names a package (``f"randlabels.plots.{name}"``: all of that
package). A name known only at run time (``import_module(snakemake.params.module)``)
is the caller's to add. No Snakemake here: workflow/rules/common.smk calls this.
"""

from __future__ import annotations

import ast
import functools
import os
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "randlabels"


def code_files(
    script: str | os.PathLike, src: str | os.PathLike, extra: Iterable[str] = (), package: str = PACKAGE
) -> list[Path]:
    """The files of ``package`` under ``src`` that running ``script`` executes: the
    modules it imports, the ``__init__.py`` of their packages and, recursively, what
    those import; the same for the dotted module names in ``extra``. Sorted."""
    src = Path(src)
    extra = list(extra)
    for name in extra:  # a misspelt name would silently drop the dependency
        if len(module_files(name, src)) != name.count(".") + 1:
            raise ModuleNotFoundError(f"{name}: no such module under {src}")
    seen: set[Path] = set()
    todo = extra + _imported(Path(script), None, package, src)
    while todo:
        for path in module_files(todo.pop(), src):
            if path not in seen:
                seen.add(path)
                todo += _imported(path, module_name(path, src), package, src)
    return sorted(seen)


def module_files(name: str, src: str | os.PathLike) -> list[Path]:
    """The files that importing the dotted ``name`` executes, as far as they lie under
    ``src``: each package's ``__init__.py`` on the way, then the module's own file.
    A trailing attribute (``randlabels.io.write_table``) or a name that is not there
    adds nothing."""
    files, folder = [], Path(src)
    for part in name.split("."):
        if (folder / part / "__init__.py").is_file():
            folder = folder / part
            files.append(folder / "__init__.py")
        else:
            if (folder / f"{part}.py").is_file():
                files.append(folder / f"{part}.py")
            break
    return files


def package_modules(name: str, src: str | os.PathLike) -> list[str]:
    """Every module of package ``name`` under ``src``, sub-packages included."""
    folder = Path(src, *name.split("."))
    if not (folder / "__init__.py").is_file():
        return []
    paths = (path for path in folder.rglob("*.py") if "__pycache__" not in path.parts)
    return sorted(module_name(path, Path(src)) for path in paths)


def module_name(path: Path, src: Path) -> str:
    """``src/a/b/c.py`` -> ``a.b.c``; ``src/a/b/__init__.py`` -> ``a.b``."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(path: Path, module: str | None, package: str, src: Path) -> list[str]:
    """The names of ``package`` that ``path`` (module ``module``; None for a script)
    may import, a package imported by a computed name expanded to its modules."""
    stat = path.stat()
    names = _imports(str(path), stat.st_mtime_ns, stat.st_size, module, path.name == "__init__.py")
    ours = [name for name in names if name == package or name.startswith(package + ".")]
    return [found for name in ours for found in (package_modules(name[:-2], src) if name.endswith(".*") else [name])]


@functools.lru_cache(maxsize=None)
def _imports(path: str, _mtime_ns: int, _size: int, module: str | None, is_package: bool) -> tuple[str, ...]:
    """Dotted names a file imports: ``from a import b`` gives ``a`` and ``a.b`` (b may
    be a submodule); ``p.*`` stands for package p imported by a computed name. Cached
    per version of the file (its mtime and size are part of the key)."""
    tree = ast.parse(Path(path).read_bytes(), filename=path)
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, module, is_package)
            if base is not None:
                names.append(base)
                names += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                names.append(argument.value)
            elif isinstance(argument, ast.JoinedStr) and argument.values:
                start = argument.values[0]
                if isinstance(start, ast.Constant) and start.value.endswith("."):
                    names.append(start.value + "*")
    return tuple(names)


def _absolute(name: str | None, level: int, module: str | None, is_package: bool) -> str | None:
    """The absolute module of ``from <level dots><name> import ...`` written in
    ``module`` (None: outside any package, where relative imports are not ours)."""
    if level == 0:
        return name
    if module is None:
        return None
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level > len(parts):
        return None
    parts = parts[: len(parts) - level + 1]
    return ".".join(parts + ([name] if name else []))


def _is_import_module(func: ast.expr) -> bool:
    """``importlib.import_module(...)`` or a bare ``import_module(...)``."""
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id == "import_module"
