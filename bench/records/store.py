"""The results store: JSON Lines, one record per cell, every write atomic and made under a lock."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path

RESULTS_FILE = "results.jsonl"
SUITE_FILE = "suite.json"  # the validated suite beside its results: what reports and verdicts read
LOCK_FILE = "results.jsonl.lock"  # held (fcntl.flock) while the directory is read, merged and rewritten
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


_NOT_JSON = object()


def _lines(text: str):
    """(line number, decoded JSON value or _NOT_JSON) for every non-blank line of a results file."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError:
                yield number, _NOT_JSON


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
        self.order: dict[str, int] = {}  # cell_id -> position in the suite (set by `open`)

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
        for number, record in _lines(text):
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
        store.order = {cell_id: i for i, cell_id in enumerate(cell_ids)}
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
        """Merges records into the file (replacing any with the same cell_id) under the lock, atomically; a
        store opened for a run keeps them in the suite's cell order, whatever order the groups train in."""
        with self.locked():
            new = {r["cell_id"] for r in records}
            self.records = [r for r in self._read() if r["cell_id"] not in new] + records
            self.records.sort(key=lambda r: self.order.get(r["cell_id"], len(self.order)))
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
    from bench.records.cell import SCHEMA_VERSION

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
    for number, record in _lines(text):
        if record is _NOT_JSON:
            raise ValueError(f"{file}: line {number}: not JSON (expected one results record per line)")
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
