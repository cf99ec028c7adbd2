"""The results store: JSON Lines, one record per cell, every write atomic and made under a lock."""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
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
LOCK_FILE = "results.jsonl.lock"  # held (fcntl.flock) while the directory is read, merged and rewritten
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


class StoreError(ValueError):
    """A results directory or file that cannot be used as asked; the message names it and says why (exit 2)."""


def _describe(e: OSError) -> str:
    return e.strerror or type(e).__name__


def read_suite(out_dir) -> dict:
    """The suite.json of a results directory; StoreError if it is missing or not a JSON object."""
    path = Path(out_dir) / SUITE_FILE
    try:
        suite = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file (run `python -m bench run` first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{path}: not readable as a suite record ({type(e).__name__}); it is corrupt: move the "
                         "directory away and rerun") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("name"), str):
        raise StoreError(f"{path}: not a suite record (no name); move the directory away and rerun")
    return suite


class ResultsStore:
    """The records of one output directory, keyed by cell_id.

    `ResultsStore(dir)` reads them. `ResultsStore.open(dir, suite, cell_ids)` opens the directory for a run:
    it creates it, checks under the lock that every record there belongs to the suite being run (refusing
    another suite's directory, or one run with other --seeds/--steps, unless force), and writes suite.json.
    `add` merges new records into the file under an exclusive lock, so --shard jobs writing into one
    directory at the same time keep every record; a failed write (a full disk) leaves the old file whole.
    """

    def __init__(self, out_dir):
        self.dir = Path(out_dir)
        self.path = self.dir / RESULTS_FILE
        self.records: list[dict] = self._read()

    def _read(self) -> list[dict]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        except IsADirectoryError:
            raise StoreError(f"{self.path}: is a directory, not a results file") from None
        except UnicodeDecodeError:
            raise StoreError(f"{self.path}: not text; the file is corrupt: move it away (records in it are "
                             "lost) and rerun to train its cells again") from None
        except OSError as e:
            raise StoreError(f"{self.path}: cannot be read ({_describe(e)})") from None
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("cell_id"), str):
                raise StoreError(f"{self.path}: line {number} is not a results record (the file is truncated or "
                                 "corrupt); move it away, or delete that line to retrain its cell")
            records.append(record)
        return records

    @contextlib.contextmanager
    def locked(self):
        """Holds the directory's exclusive lock (other processes wait); creates the directory if needed."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        except FileExistsError:
            raise StoreError(f"{self.dir}: exists and is not a directory; give --out a directory") from None
        except OSError as e:
            raise StoreError(f"{self.dir}: cannot be used as the output directory ({_describe(e)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @classmethod
    def open(cls, out_dir, suite: dict, cell_ids, force: bool = False) -> ResultsStore:
        """Opens `out_dir` for a run of `suite` (its suite.json) whose cells are `cell_ids`; StoreError if refused."""
        store = cls.__new__(cls)
        store.dir, store.path = Path(out_dir), Path(out_dir) / RESULTS_FILE
        with store.locked():
            for name in (RESULTS_FILE, SUITE_FILE):  # temporary files of a writer that was killed (writers hold the lock)
                for stale in store.dir.glob(f".{name}.*"):
                    stale.unlink(missing_ok=True)
            store.records = store._read()
            old = read_suite(store.dir) if (store.dir / SUITE_FILE).exists() else None
            reason = _foreign(old, suite, store.records, set(cell_ids))
            if reason and not force:
                raise StoreError(f"{store.dir}: {reason}; use another --out, or --force to discard them")
            if reason:
                store.records = [r for r in store.records if r["cell_id"] in cell_ids]
                store._write()
            store._atomic(store.dir / SUITE_FILE, json.dumps(suite, indent=1, allow_nan=False))
        return store

    def done(self) -> set[str]:
        """The cell ids already recorded."""
        return {r["cell_id"] for r in self.records}

    def add(self, records: list[dict]) -> None:
        """Merges records into the file (replacing any with the same cell_id) under the lock, atomically."""
        with self.locked():
            new = {r["cell_id"] for r in records}
            self.records = [r for r in self._read() if r["cell_id"] not in new] + records
            self._write()

    def _write(self) -> None:
        self._atomic(self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.records))

    def _atomic(self, path: Path, text: str) -> None:
        try:
            atomic_write(path, text)
        except OSError as e:
            full = " (the disk is full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            raise StoreError(f"{path}: cannot be written ({_describe(e)}){full}; the file as it was is kept: "
                             "rerun the same command to resume") from None


def _foreign(old: dict | None, suite: dict, records: list[dict], cell_ids: set) -> str | None:
    """Why a directory's contents do not belong to `suite`, or None."""
    if old is not None and old["name"] != suite["name"]:
        return f"holds results of suite {old['name']!r}, not {suite['name']!r}"
    others = [r for r in records if r["cell_id"] not in cell_ids]
    if not others:
        return None
    was, now = (old or {}).get("settings", {}), suite.get("settings", {})
    changed = [f"{k}={was.get(k)}" for k in ("seeds", "steps") if k in was and was.get(k) != now.get(k)]
    if changed:
        return (f"was run with {', '.join(changed)} (this run: "
                f"{', '.join(f'{k}={now.get(k)}' for k in ('seeds', 'steps'))}); its {len(others)} records are "
                "of other cells")
    return f"holds {len(others)} records of cells that are not in this suite (was the suite file edited?)"


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
