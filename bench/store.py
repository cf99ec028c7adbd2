"""The results store: JSON Lines, one record per cell, every write atomic."""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

import jax

RESULTS_FILE = "results.jsonl"
SUITE_FILE = "suite.json"  # the validated suite beside its results: what reports and verdicts read
CODE_DIRS = ("bench", "models", "tasks")
CODE_PATHS = (*CODE_DIRS, "pyproject.toml")


def _code_hash(root: Path) -> str:
    """sha256 over the .py files of bench/, models/ and tasks/ (relative path and contents, sorted by path)."""
    digest = hashlib.sha256()
    for path in sorted(p for d in CODE_DIRS for p in (root / d).rglob("*.py") if "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _plugins() -> dict:
    """Versions of the installed jaxlib plugins (jax-cuda12-plugin, jax-cuda12-pjrt, ...)."""
    names = {d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"]}
    return {n: _version(n) for n in sorted(names)
            if n.lower().replace("_", "-").startswith(("jax-cuda", "jax-rocm", "jax-tpu", "jax-plugins", "libtpu"))}


def _cuda_versions() -> dict:
    """CUDA driver, runtime and cuDNN versions where jax's CUDA plugin exposes them (empty otherwise)."""
    try:
        from jax._src.lib import cuda_versions
    except ImportError:
        return {}
    out = {}
    for name in ("cuda_driver_get_version", "cuda_runtime_get_version", "cudnn_get_version", "cublas_get_version"):
        try:
            out[name.removesuffix("_get_version")] = int(getattr(cuda_versions, name)())
        except Exception:  # noqa: BLE001  (no plugin, no GPU, or an older plugin without that function)
            pass
    return out


@functools.lru_cache(maxsize=1)
def _static_env() -> dict:
    from bench import calibrate

    root = Path(__file__).resolve().parent.parent

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    devices = jax.devices()
    return {
        "package_version": _version("gradbench"),
        "code_sha256": _code_hash(root),
        "versions": {p: metadata.version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy", "scipy")},
        "jax_plugins": _plugins(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "platform_version": getattr(devices[0].client, "platform_version", None),
        "cuda": _cuda_versions(),
        "default_matmul_precision": jax.config.jax_default_matmul_precision,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "matmul_flops_per_s": calibrate.matmul_flops_per_s(),
        "git_commit": git("rev-parse", "HEAD").strip() or None,
        # Dirty: uncommitted changes to the code that produces the numbers (not to results or docs).
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS).strip()),
    }


def environment() -> dict:
    """Package version and code hash, library versions, CPU, accelerator, calibration, git commit, timestamp."""
    return {**_static_env(), "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def atomic_write(path: Path, text: str) -> None:
    """Writes `text` to `path` so a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class ResultsStore:
    """The records of one output directory, keyed by cell_id."""

    def __init__(self, out_dir):
        self.path = Path(out_dir) / RESULTS_FILE
        self.records: list[dict] = []
        if self.path.exists():
            self.records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def done(self) -> set[str]:
        """The cell ids already recorded."""
        return {r["cell_id"] for r in self.records}

    def add(self, records: list[dict]) -> None:
        """Adds records (replacing any with the same cell_id) and rewrites the file atomically."""
        new = {r["cell_id"] for r in records}
        self.records = [r for r in self.records if r["cell_id"] not in new] + records
        atomic_write(self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.records))


def suite_from(out_dir, suite_path) -> str | None:
    """The suite file's path as seen from a results directory (absolute when the suite file is; None if absent)."""
    if not Path(suite_path).is_file():
        return None
    if Path(suite_path).is_absolute():
        return str(suite_path)
    return os.path.relpath(os.path.abspath(suite_path), os.path.abspath(out_dir))


PROVENANCE = ("git_commit", "git_dirty", "code_sha256", "package_version", "versions")  # what merge keeps apart
LOCAL_SUITE_KEYS = ("suite_from_out",)  # suite.json keys that depend on where a shard was written


def _provenance(env: dict) -> str:
    return json.dumps({k: env.get(k) for k in PROVENANCE}, sort_keys=True)


def _mixed(sources: dict[str, list[dict]]) -> str | None:
    """What differs in provenance between the directories' records, or None."""
    seen: dict[str, list[str]] = {}
    for directory, recs in sources.items():
        for r in recs:
            seen.setdefault(_provenance(r["env"]), [])
            if directory not in seen[_provenance(r["env"])]:
                seen[_provenance(r["env"])].append(directory)
    if len(seen) < 2:
        return None
    (first, where_a), (second, where_b) = list(seen.items())[:2]
    a, b = json.loads(first), json.loads(second)
    diffs = [f"{k} {a[k]!r} ({', '.join(where_a)}) vs {b[k]!r} ({', '.join(where_b)})" for k in PROVENANCE
             if a[k] != b[k]]
    return "; ".join(diffs)


def merge(out_dir, shard_dirs, allow_mixed: bool = False) -> int:
    """Merges the results of `--shard i/n` jobs of one suite into a new `out_dir`; returns the record count.

    Raises ValueError (nothing written) when a directory holds no results, comes from another suite, repeats
    a cell of another, or (unless allow_mixed) was made by another commit, code or library versions.
    """
    suites, sources = [], {}
    if (Path(out_dir) / RESULTS_FILE).exists():
        raise ValueError(f"{out_dir}: already holds {RESULTS_FILE}; merge into a new directory")
    for directory in map(Path, shard_dirs):
        if not (directory / RESULTS_FILE).exists() or not (directory / SUITE_FILE).exists():
            raise ValueError(f"{directory}: no {RESULTS_FILE} and {SUITE_FILE} here")
        suite = json.loads((directory / SUITE_FILE).read_text())
        suites.append({k: v for k, v in suite.items() if k not in LOCAL_SUITE_KEYS})
        if str(directory) in sources:
            raise ValueError(f"{directory}: given twice; each shard once")
        sources[str(directory)] = read_results(directory)
    if any(s != suites[0] for s in suites[1:]):
        raise ValueError(f"{', '.join(map(str, shard_dirs))}: not shards of one suite (their {SUITE_FILE} differ)")
    owner: dict[str, str] = {}
    for directory, recs in sources.items():
        for r in recs:
            if r["cell_id"] in owner:
                raise ValueError(f"cell {r['cell_id']} ({r['experiment']}: {r['label']}) is in both "
                                 f"{owner[r['cell_id']]} and {directory}; merge shards that do not overlap")
            owner[r["cell_id"]] = directory
    mixed = _mixed(sources)
    if mixed and not allow_mixed:
        raise ValueError(f"records of different provenance: {mixed}; pass --allow-mixed to merge them anyway "
                         "(the report then lists each environment)")
    first = json.loads((Path(shard_dirs[0]) / SUITE_FILE).read_text())
    if first.get("suite_from_out") and not Path(first["suite_from_out"]).is_absolute():
        first["suite_from_out"] = suite_from(out_dir, Path(shard_dirs[0]) / first["suite_from_out"])
    atomic_write(Path(out_dir) / SUITE_FILE, json.dumps(first, indent=1))
    store = ResultsStore(out_dir)
    store.add([r for recs in sources.values() for r in recs])
    return len(store.records)

REQUIRED_KEYS = ("cell_id", "schema_version", "suite", "experiment", "label", "config", "per_seed", "throughput",
                 "env")


def read_results(path, oldest: int | None = None) -> list[dict]:
    """The records of a results file or a run directory; ValueError (one line) if unreadable or of another schema.

    Args:
      oldest: the oldest schema_version accepted (default: only the current one).
    """
    from bench.records import SCHEMA_VERSION

    oldest = SCHEMA_VERSION if oldest is None else oldest
    path = Path(path)
    file = path / RESULTS_FILE if path.is_dir() else path
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ValueError(f"{file}: no such file (expected a {RESULTS_FILE} or a run directory holding one)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: cannot read it as text ({type(e).__name__})") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{file}: line {number}: not JSON (expected one results record per line)") from None
        missing = [k for k in REQUIRED_KEYS if k not in record] if isinstance(record, dict) else ["cell_id"]
        if missing:
            raise ValueError(f"{file}: line {number}: not a results record (no {missing[0]!r})")
        version = record["schema_version"]
        if type(version) is not int or not oldest <= version <= SCHEMA_VERSION:
            known = f"{SCHEMA_VERSION}" if oldest == SCHEMA_VERSION else f"{oldest} to {SCHEMA_VERSION}"
            hint = ("written by an older gradbench: rerun the suite" if type(version) is int and version < oldest
                    else "unknown: upgrade gradbench to read it")
            raise ValueError(f"{file}: line {number}: schema_version {version!r} is {hint} (this one reads {known})")
        records.append(record)
    if not records:
        raise ValueError(f"{file}: no results records")
    return records
