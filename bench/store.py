"""The results store: JSON Lines, one record per cell, every write atomic."""
from __future__ import annotations

import datetime
import functools
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
CODE_PATHS = ("bench", "models", "tasks", "pyproject.toml")


@functools.lru_cache(maxsize=1)
def _static_env() -> dict:
    root = Path(__file__).resolve().parent.parent

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    devices = jax.devices()
    return {
        "versions": {p: metadata.version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy", "scipy")},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "git_commit": git("rev-parse", "HEAD").strip() or None,
        # Dirty: uncommitted changes to the code that produces the numbers (not to results or docs).
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS).strip()),
    }


def environment() -> dict:
    """Versions, backend, devices, XLA flags, git commit and dirty flag, timestamp."""
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


def merge(out_dir, shard_dirs) -> int:
    """Merges the results of `--shard i/n` jobs of one suite into `out_dir`; returns the record count.

    Raises ValueError when a directory holds no results or comes from another suite.
    """
    suites, records = [], []
    for directory in map(Path, shard_dirs):
        if not (directory / RESULTS_FILE).exists() or not (directory / SUITE_FILE).exists():
            raise ValueError(f"{directory}: no {RESULTS_FILE} and {SUITE_FILE} here")
        suites.append(json.loads((directory / SUITE_FILE).read_text()))
        records += ResultsStore(directory).records
    if any(s != suites[0] for s in suites[1:]):
        raise ValueError(f"{', '.join(map(str, shard_dirs))}: not shards of one suite (their {SUITE_FILE} differ)")
    atomic_write(Path(out_dir) / SUITE_FILE, json.dumps(suites[0], indent=1))
    store = ResultsStore(out_dir)
    store.add(records)
    return len(store.records)
