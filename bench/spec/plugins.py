"""Plugins: Python modules a suite names in `[suite] plugins`, imported before its cells are made.

A plugin registers mitigations (optax gradient transforms included), auxiliary losses, model families and tasks
through `gradbench.spec.register`, the API the built-in entries use. This module imports them and keeps, per
registered entry, the plugin that registered it (`ORIGINS`), so that:

- a cell that uses a plugin's entry (its task, family, mitigation, or a transform or auxiliary loss its plan
  holds) carries `config["plugins"] = {plugin name: sha256 of its source}`: its cell_id changes when the
  plugin's source does (cells of built-in entries only have no such key, and keep their ids);
- a run's code hash (`code_sha256` of its records) joins the source of every plugin of its suite
  (gradbench.records.env.code_hash_with), so records made with another version of a plugin are never reused.

A plugin is named as an importable module (`my_ext`, `pkg.ext`) or a `.py` file path relative to the suite
file's directory (its name: the file's stem). The suite records the list (suite.json `plugins`: name, module
as written, sha256), and `bench reproduce` imports it again. A plugin that cannot be imported is one SuiteError
naming the suite file, the key `suite.plugins` and the problem.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

from gradbench.spec.schema import SuiteError

KEY = "suite.plugins"


@dataclasses.dataclass(frozen=True)
class Plugin:
    """A loaded plugin: its name (the module's; a file's stem), the module as the suite wrote it, the sha256
    of its source (every .py file of a package) and those files."""

    name: str
    module: str
    sha256: str
    files: tuple[str, ...]

    def record(self) -> dict:
        """What suite.json keeps of it."""
        return {"name": self.name, "module": self.module, "sha256": self.sha256}


LOADED: dict[str, Plugin] = {}  # plugin name -> the plugin as last loaded in this process
ORIGINS: dict[tuple[str, str], str] = {}  # (kind, entry name) -> the plugin that registered it
_loading: list[str] = []  # the plugin being imported now (its registrations are attributed to it)


def registering(kind: str, name: str, registry: dict) -> None:
    """Called by every registration before it writes `registry[name]`: ValueError when the name is taken by
    another plugin or a built-in entry; attributes the entry to the plugin being imported (None: built in)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{kind} name {name!r} must be an identifier (letters, digits, _)")
    owner = _loading[-1] if _loading else None
    if name in registry and (owner is None or ORIGINS.get((kind, name)) != owner):
        by = ORIGINS.get((kind, name))
        raise ValueError(f"{kind} {name!r} is already registered ({f'by plugin {by!r}' if by else 'built in'}); "
                         "choose another name")
    if owner is not None:
        ORIGINS[(kind, name)] = owner
        _written.append((kind, name, registry))


_written: list[tuple[str, str, dict]] = []  # what the plugin being imported registered (undone if it fails)


def source_hash(files) -> str:
    """sha256 over the files (name and contents, sorted by path)."""
    digest = hashlib.sha256()
    for path in sorted(map(Path, files)):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _is_file(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def _problem(e: BaseException, files) -> str:
    """One line: where in the plugin's own files an import failed, and why."""
    where = ""
    frames = traceback.extract_tb(e.__traceback__)
    inside = [f for f in frames if str(Path(f.filename).resolve()) in files]
    if isinstance(e, SyntaxError) and e.filename:
        where = f" ({e.filename} line {e.lineno})"
    elif inside:
        where = f" ({inside[-1].filename} line {inside[-1].lineno})"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}{': ' + text if text else ''}{where}"


def _execute(name: str, run) -> None:
    """Runs a plugin's import with its registrations attributed to it; a failed import registers nothing."""
    _loading.append(name)
    mark = len(_written)
    try:
        run()
    except BaseException:
        for kind, entry, registry in _written[mark:]:
            registry.pop(entry, None)
            ORIGINS.pop((kind, entry), None)
        raise
    finally:
        del _written[mark:]
        _loading.pop()


def _load_file(spec: str, base: Path) -> Plugin:
    path = (base / spec).resolve()
    if not path.is_file():
        raise _Refused(f"{spec!r}: no such file ({base / spec}); allowed: an importable module name or a .py file "
                       "relative to the suite file")
    name = path.stem
    if not name.isidentifier():
        raise _Refused(f"{spec!r}: the file's name {name!r} is not a Python module name; rename it (letters, digits, "
                       "_)")
    files = (str(path),)
    sha = source_hash(files)
    old = LOADED.get(name)
    if old is not None and old.files == files and old.sha256 == sha:
        return old
    if old is not None and old.files != files:
        raise _Refused(f"{spec!r}: another plugin named {name!r} is already loaded from {old.files[0]}; plugin names "
                       "must differ")
    if name in sys.modules and old is None:
        raise _Refused(f"{spec!r}: {name!r} is already the name of an imported module "
                       f"({getattr(sys.modules[name], '__file__', None) or 'built in'}); rename the plugin file")
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    _import(name, lambda: module_spec.loader.exec_module(module), f"{spec!r} ({path})", files)
    return Plugin(name, spec, sha, files)


def _load_module(spec: str) -> Plugin:
    if not all(part.isidentifier() for part in spec.split(".")):
        raise _Refused(f"{spec!r} is not a module name; allowed: an importable module name or a .py file relative "
                       "to the suite file")
    try:
        found = importlib.util.find_spec(spec)
    except (ImportError, ValueError) as e:
        raise _Refused(f"{spec!r} cannot be imported: {_problem(e, ())}") from None
    if found is None or not found.origin or not found.origin.endswith(".py"):
        raise _Refused(f"{spec!r}: no such module (not importable from this Python: is it installed, or on "
                       "PYTHONPATH?); allowed: an importable module name or a .py file relative to the suite file")
    origin = Path(found.origin).resolve()
    package = found.submodule_search_locations is not None
    files = tuple(sorted(str(p.resolve()) for p in origin.parent.rglob("*.py") if "__pycache__" not in p.parts)) \
        if package else (str(origin),)
    sha = source_hash(files)
    old = LOADED.get(spec)
    if old is not None and old.sha256 == sha and spec in sys.modules:
        return old
    _import(spec, (lambda: importlib.reload(sys.modules[spec])) if spec in sys.modules
            else (lambda: importlib.import_module(spec)), f"{spec!r} ({origin})", files)
    return Plugin(spec, spec, sha, files)


def _import(name: str, action, where: str, files) -> None:
    """Runs a plugin's import (`_execute`); one that fails leaves no module behind and is refused in one line."""
    try:
        _execute(name, action)
    except BaseException as e:
        sys.modules.pop(name, None)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise _Refused(f"{where} cannot be imported: {_problem(e, files)}") from None


class _Refused(Exception):
    pass


def load(specs, base_dir, source) -> tuple[Plugin, ...]:
    """Imports each plugin (a module name, or a .py path relative to `base_dir`) in order; returns them.

    SuiteError (`source`: the file named in the message; key `suite.plugins`) for a plugin that is not found,
    fails to import, or registers a name that is taken.
    """
    out = []
    for spec in specs:
        try:
            plugin = _load_file(spec, Path(base_dir)) if _is_file(spec) else _load_module(spec)
        except _Refused as e:
            raise SuiteError(source, KEY, str(e)) from None
        LOADED[plugin.name] = plugin
        out.append(plugin)
    names = [p.name for p in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SuiteError(source, KEY, f"plugin {twice[0]!r} is named twice; name each plugin once")
    return tuple(out)


def load_recorded(entries, suite_file, source) -> tuple[Plugin, ...]:
    """The plugins a results directory's suite.json records (`entries`: name, module, sha256), imported again
    (a file plugin relative to the recorded suite file's directory). SuiteError as `load`."""
    if not entries:
        return ()
    base = Path(suite_file).parent if suite_file else Path(".")
    return load([e["module"] for e in entries], base, source)


def _mitigation_names(table) -> list[str]:
    """The mitigation's name and those of any tables inside its parameters (combo's `apply`)."""
    names = [table.get("name")]
    for value in table.values():
        if isinstance(value, list):
            names += [n for t in value if isinstance(t, dict) for n in _mitigation_names(t)]
    return names


def used(config: dict, plan: dict) -> dict[str, str]:
    """{plugin name: sha256} of every plugin whose entries the cell uses (empty for built-in entries only)."""
    entries = [("task", config["task"]["name"]), ("family", config["model"]["family"]),
               *(("mitigation", n) for n in _mitigation_names(config["mitigation"])),
               *(("transform", t["name"]) for t in plan.get("transforms", [])),
               *(("aux_loss", t["name"]) for t in plan.get("aux_losses", []))]
    owners = sorted({ORIGINS[e] for e in entries if e in ORIGINS})
    return {o: LOADED[o].sha256 for o in owners if o in LOADED}
