"""The layering of bench/ (installed as the package gradbench): imports point one way only (docs/REFERENCE.md,
"Layout").

Every module under bench/ is parsed with `ast`; each of its imports of gradbench
(absolute or relative, at the top or inside a function) is resolved to the
layer it reaches and checked against ALLOWED. models/ and tasks/
(gradbench.models, gradbench.tasks) never import the harness at all.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

# layer -> the layers its modules may import (its own included). "cli" is bench/cli.py, the command
# line on top; "api" is bench/api.py, the Python API beside it (the command line is built on it);
# "package" is bench/__init__.py, which imports only the API, lazily (module __getattr__), so `--help` is fast.
LAYERS = ("spec", "engine", "records", "analysis", "reports", "peers")
ALLOWED = {
    "spec": {"spec"},
    "records": {"records", "spec"},
    "engine": {"engine", "records", "spec"},
    "analysis": {"analysis", "engine", "records", "spec"},
    "reports": {"reports", "analysis", "records", "spec"},
    "peers": {"peers", "engine", "spec"},
    "api": {"api", *LAYERS},
    "cli": {"cli", "package", "api", *LAYERS},
    "main": {"cli"},  # bench/__main__.py: `python -m gradbench` (and `python -m bench` in the repository)
    "package": {"api"},
}


FOLDERS = {"bench": ["gradbench"], "models": ["gradbench", "models"], "tasks": ["gradbench", "tasks"]}


def module_name(path: Path, root: Path = ROOT) -> str:
    """bench/spec/suite.py -> gradbench.spec.suite; bench/spec/__init__.py -> gradbench.spec; models/mlp.py ->
    gradbench.models.mlp (the installed names, pyproject.toml)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    parts = FOLDERS[parts[0]] + parts[1:]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    """The layer of a module of the harness (None: not the harness: another package, or gradbench.models and
    gradbench.tasks)."""
    parts = module.split(".")
    if parts[0] != "gradbench" or (len(parts) > 1 and parts[1] in ("models", "tasks")):
        return None
    if len(parts) == 1:
        return "package"
    if parts[1] == "__main__":
        return "main"
    if parts[1] == "cli":
        return "cli"
    if parts[1] == "api":
        return "api"
    if parts[1] in LAYERS:
        return parts[1]
    if (BENCH / f"{parts[1]}.py").exists() or (BENCH / parts[1]).is_dir():
        return f"unplaced ({parts[1]})"  # a module or folder of bench/ outside the layers
    return "package"  # a name of bench/__init__.py


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) for every import of the source, relative ones resolved, `from X import a` as X.a.

    Every import counts wherever it is (module level, a function, a class, under `if TYPE_CHECKING`), and so
    do importlib.import_module("...") and __import__("...") with a literal name.
    """
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            # `from gradbench import store` imports the module bench.store; `from gradbench.x import name` reaches bench.x.
            found += [(node.lineno, f"{prefix}.{alias.name}" if alias.name != "*" else prefix) for alias in node.names]
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of a bench module that break ALLOWED, one line each."""
    layer = layer_of(module)
    out = []
    for line, target in imported_modules(source, module, is_package):
        reached = layer_of(target)
        if reached is None:
            continue
        if reached not in ALLOWED.get(layer, set()):
            out.append(f"{module}:{line}: imports {target} ({layer} -> {reached}; {layer} may import "
                       f"{', '.join(sorted(ALLOWED.get(layer, ()))) or 'no bench module'})")
    return out


def bench_modules():
    return sorted(p for p in BENCH.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_of_bench_belongs_to_a_layer():
    unplaced = [str(p.relative_to(ROOT)) for p in bench_modules() if layer_of(module_name(p)) not in ALLOWED]
    assert not unplaced, f"modules outside the layers {LAYERS} (move each into the layer it belongs to): {unplaced}"
    assert {p.parent.name for p in BENCH.glob("*/__init__.py")} == set(LAYERS)


def test_imports_point_one_way_only():
    found = []
    for path in bench_modules():
        found += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not found, "imports against the layering (move the code down a layer, do not hide the import):\n" + \
        "\n".join(found)


@pytest.mark.parametrize("directory", ["models", "tasks"])
def test_models_and_tasks_never_import_the_harness(directory):
    found = []
    for path in sorted((ROOT / directory).rglob("*.py")):
        module = module_name(path)
        found += [f"{path.relative_to(ROOT)}:{line}: imports {target}"
                  for line, target in imported_modules(path.read_text(), module, path.name == "__init__.py")
                  if target.split(".")[0] == "bench" or layer_of(target) is not None]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module, source", [
    ("gradbench.spec.claim_schema", "from gradbench.analysis.claims import EXPECT\n"),
    ("gradbench.spec.suite", "def f():\n    from gradbench.records import metrics\n"),
    ("gradbench.records.store", "from ..engine import runner\n"),
    ("gradbench.engine.runner", "import gradbench.reports.console\n"),
    ("gradbench.analysis.claims", "from gradbench.reports import report\n"),
    ("gradbench.reports.report", "from gradbench.engine import probe\n"),
    ("gradbench.peers.cases", "import importlib\nimportlib.import_module('gradbench.analysis.compare')\n"),
    ("gradbench.spec.build", "from gradbench import cli\n"),
    ("gradbench.spec", "from . import schema\nfrom ..records import cell\n"),
])
def test_a_forbidden_import_is_found(module, source):
    """The checker itself: each of these breaks the layering, in the ways an import can be written."""
    assert len(violations(source, module, is_package=module.count(".") == 1)) == 1


def test_allowed_imports_pass():
    assert not violations("from gradbench.spec import build\nfrom . import metrics\nfrom .cell import read_extended\n",
                          "gradbench.records.store")
    assert not violations("from gradbench.analysis import claims\nfrom gradbench import api\n", "gradbench.cli")
    assert not violations("from gradbench.cli import main\n", "gradbench.__main__")


def test_the_claim_measures_the_spec_validates_are_the_ones_analysis_computes():
    from gradbench.analysis import claims
    from gradbench.spec import claim_schema

    assert set(claims.MEASURES) == set(claim_schema.MEASURES)
