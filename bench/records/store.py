"""The results store: JSON Lines, one record per cell, every write atomic and made under a lock."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path

from gradbench.spec import files
from gradbench.records import validate

RESULTS_FILE = "results.jsonl"
SUITE_FILE = "suite.json"  # the validated suite beside its results: what reports and verdicts read
LOCK_FILE = "results.jsonl.lock"  # held (fcntl.flock) while the directory is read, merged and rewritten


def atomic_write(path: Path, text: str) -> None:
    """Writes `text` to `path` so a reader sees the old file or the new one, never half.

    An OSError names `path` (never the temporary file beside it), and a directory at `path` is refused
    before anything is written.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


class StoreError(ValueError):
    """A results directory or file that cannot be used as asked; the message names it and says why (exit 2)."""


def _describe(e: OSError) -> str:
    return e.strerror or type(e).__name__


def read_suite(out_dir) -> dict:
    """The suite.json of a results directory; StoreError (naming the file and key) if missing or not a suite record."""
    path = Path(out_dir) / SUITE_FILE
    try:
        suite = validate.loads(files.read_bytes(path, "json").decode("utf-8"))
        validate.suite(suite)
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file (run `gradbench run` first)") from None
    except files.InputError as e:
        raise StoreError(str(e)) from None
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); the file is corrupt: "
                         "move the directory away and rerun") from None
    except validate.Invalid as e:
        raise StoreError(f"{path}: {e} (not a suite record as `bench run` writes it); move the directory away and "
                         "rerun") from None
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: not readable as a suite record ({type(e).__name__}); it is corrupt: move the "
                         "directory away and rerun") from None
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

    def _text(self) -> str:
        """The results file's text ('' if there is none); StoreError naming it if it cannot be read as one."""
        try:
            return files.read_bytes(self.path, "results").decode("utf-8")
        except FileNotFoundError:
            return ""
        except IsADirectoryError:
            raise StoreError(f"{self.path}: is a directory, not a results file") from None
        except files.InputError as e:
            raise StoreError(str(e)) from None
        except UnicodeDecodeError:
            raise StoreError(f"{self.path}: not text; the file is corrupt: move it away (records in it are "
                             "lost) and rerun to train its cells again") from None
        except OSError as e:
            raise StoreError(f"{self.path}: cannot be read ({_describe(e)})") from None

    def _read(self) -> list[dict]:
        """The file's records, checked only for a cell_id (a store's own writes; `open` validates in full)."""
        records = []
        for number, line in enumerate(self._text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = validate.loads(line)
            except validate.Invalid as e:
                raise StoreError(f"{self.path}: line {number}: {e}") from None
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
    def open(cls, out_dir, suite: dict, cell_ids, force: bool = False, provenance: dict | None = None) -> ResultsStore:
        """Opens `out_dir` for a run of `suite` (its suite.json) whose cells are `cell_ids`; StoreError if refused.

        Every record already there is validated (`parse_records`). With `provenance` (gradbench.records.env.provenance
        of this process), records made under another code hash, library or Python version, or by an older
        gradbench (schema), are never reused: refused in one line naming the difference, or with `force`
        discarded, so their cells train again.
        """
        from gradbench.records.validate import SCHEMA_VERSION

        if provenance is not None and suite.get("plugins"):  # the run's code hash joins its plugins' sources
            from gradbench.records.env import code_hash_with

            provenance = {**provenance, "code_sha256": code_hash_with(provenance["code_sha256"], suite["plugins"])}
        store = cls.__new__(cls)
        store.dir, store.path = Path(out_dir), Path(out_dir) / RESULTS_FILE
        store.order = {cell_id: i for i, cell_id in enumerate(cell_ids)}
        with store.locked():
            for name in (RESULTS_FILE, SUITE_FILE):  # temporary files of a writer that was killed (writers hold the lock)
                for stale in store.dir.glob(f".{name}.*"):
                    stale.unlink(missing_ok=True)
            old = read_suite(store.dir) if (store.dir / SUITE_FILE).exists() else None
            reason = _foreign(old, suite, store._read(), set(cell_ids))
            if reason and not force:
                raise StoreError(f"{store.dir}: {reason}; use another --out, or --force to discard them")
            store.records = parse_records(store._text(), store.path, oldest=1)
            stale = _stale(store.records, provenance, SCHEMA_VERSION)
            if stale and not force:
                raise StoreError(f"{store.path}: {stale[0]}; they are not reused: use another --out, or --force to "
                                 "train those cells again")
            if reason or stale:
                kept = set(cell_ids) - set(stale[1] if stale else ())
                store.records = [r for r in store.records if r["cell_id"] in kept]
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


def _stale(records: list[dict], provenance: dict | None, schema: int) -> tuple[str, set] | None:
    """(why, their cell ids) for records of an older schema or (with `provenance`) made under other code or
    library versions than this process's; None if there are none."""
    older = {r["cell_id"] for r in records if r["schema_version"] < schema}
    if older:
        return (f"{len(older)} records were written by an older gradbench (schema_version < {schema})", older)
    if provenance is None:
        return None
    from gradbench.records.env import provenance_differences

    diffs: dict[str, set] = {}
    for r in records:
        for d in provenance_differences(r["env"], provenance):
            diffs.setdefault(d, set()).add(r["cell_id"])
    if not diffs:
        return None
    ids = set().union(*diffs.values())
    return (f"{len(ids)} of its {len(records)} records were made under other code or library versions than this "
            f"run ({'; '.join(sorted(diffs))})", ids)


def _foreign(old: dict | None, suite: dict, records: list[dict], cell_ids: set) -> str | None:
    """Why a directory's contents do not belong to `suite`, or None."""
    if old is not None and old["name"] != suite["name"]:
        return f"holds results of suite {old['name']!r}, not {suite['name']!r}"
    others = [r for r in records if r["cell_id"] not in cell_ids]
    if not others:
        return None
    now_plugins = {p["name"]: p["sha256"] for p in suite.get("plugins") or []}
    edited = sorted({f"{name!r} (source sha256 {sha[:12]} -> {now_plugins[name][:12]})" for r in others
                     for name, sha in ((r.get("config") or {}).get("plugins") or {}).items()
                     if name in now_plugins and now_plugins[name] != sha})
    if edited:  # a plugin's source is part of the identity of the cells that use it
        return (f"holds {len(others)} records made with another version of plugin {', '.join(edited)}; they are "
                "not reused")
    was, now = (old or {}).get("settings", {}), suite.get("settings", {})
    changed = [f"{k}={was.get(k)}" for k in ("seeds", "steps") if k in was and was.get(k) != now.get(k)]
    if changed:
        return (f"was run with {', '.join(changed)} (this run: "
                f"{', '.join(f'{k}={now.get(k)}' for k in ('seeds', 'steps'))}); its {len(others)} records are "
                "of other cells")
    return (f"holds {len(others)} records of cells that are not in this suite (were the suite file or the --set "
            "overrides changed?)")


def suite_from(out_dir, suite_path) -> str | None:
    """The suite file's path as seen from a results directory (absolute when the suite file is; None if absent)."""
    if not Path(suite_path).is_file():
        return None
    if Path(suite_path).is_absolute():
        return str(suite_path)
    return os.path.relpath(os.path.abspath(suite_path), os.path.abspath(out_dir))


PROVENANCE = ("git_commit", "git_dirty", "code_sha256", "package_version", "versions")  # what merge keeps apart
# suite.json keys that depend on where a shard was run and written (the suite file's path as typed, relative
# to the working directory or absolute, and as seen from the output directory)
LOCAL_SUITE_KEYS = ("path", "suite_from_out")


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
    suites, sources, given = [], {}, {}
    if (Path(out_dir) / RESULTS_FILE).exists():
        raise ValueError(f"{out_dir}: already holds {RESULTS_FILE}; merge into a new directory")
    for directory in map(Path, shard_dirs):
        if not (directory / RESULTS_FILE).exists() or not (directory / SUITE_FILE).exists():
            raise ValueError(f"{directory}: no {RESULTS_FILE} and {SUITE_FILE} here")
        suite = read_suite(directory)
        suites.append({k: v for k, v in suite.items() if k not in LOCAL_SUITE_KEYS})
        if directory.resolve() in given:
            raise ValueError(f"{directory}: given twice (as {given[directory.resolve()]} too); each shard once")
        given[directory.resolve()] = directory
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
    first = read_suite(shard_dirs[0])
    if first.get("suite_from_out") and not Path(first["suite_from_out"]).is_absolute():
        first["suite_from_out"] = suite_from(out_dir, Path(shard_dirs[0]) / first["suite_from_out"])
    atomic_write(Path(out_dir) / SUITE_FILE, json.dumps(first, indent=1))
    store = ResultsStore(out_dir)
    store.add([r for recs in sources.values() for r in recs])
    return len(store.records)

REQUIRED_KEYS = ("cell_id", "schema_version", "suite", "experiment", "label", "config", "per_seed", "throughput",
                 "env")


def parse_records(text: str, file, oldest: int) -> list[dict]:
    """The records of a results file's text; StoreError naming the file, line and key for anything that is not a
    record (validate.CORE; validate.CURRENT for the current schema) of schema_version `oldest` or newer that this
    gradbench knows, or a second record of one cell."""
    from gradbench.records.validate import SCHEMA_VERSION

    records, lines = [], {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = validate.loads(line)
        except json.JSONDecodeError as e:
            raise StoreError(f"{file}: line {number}: not JSON ({e.msg} at column {e.colno}); allowed: one results "
                             "record per line (a truncated or edited file: delete that line to retrain its cell)") \
                from None
        except validate.Invalid as e:
            raise StoreError(f"{file}: line {number}: {e}") from None
        version = record.get("schema_version") if isinstance(record, dict) else None
        if isinstance(record, dict) and "schema_version" in record and (
                type(version) is not int or not oldest <= version <= SCHEMA_VERSION):
            known = f"{SCHEMA_VERSION}" if oldest == SCHEMA_VERSION else f"{oldest} to {SCHEMA_VERSION}"
            hint = ("written by an older gradbench: rerun the suite" if type(version) is int and version < oldest
                    else "unknown: upgrade gradbench to read it")
            raise StoreError(f"{file}: line {number}: schema_version {version!r} is {hint} (this one reads {known})")
        try:
            validate.record(record, current=version == SCHEMA_VERSION)
        except validate.Invalid as e:
            raise StoreError(f"{file}: line {number}: not a results record as `bench run` writes it: {e}") from None
        if record["cell_id"] in lines:
            first = lines[record["cell_id"]]
            same = "the same record" if record == records[first[1]] else "another record"
            raise StoreError(f"{file}: line {number}: cell {record['cell_id']} ({record['experiment']}: "
                             f"{record['label']}) repeats line {first[0]} ({same}); allowed: one record per cell "
                             "(delete one of the two lines)")
        lines[record["cell_id"]] = (number, len(records))
        records.append(record)
    return records


def read_results(path, oldest: int | None = None) -> list[dict]:
    """The records of a results file or a run directory; StoreError (a ValueError, one line naming the file, line
    and key) if unreadable, not records (gradbench.records.validate), of another schema, or two of one cell.

    Args:
      oldest: the oldest schema_version accepted (default: only the current one).
    """
    from gradbench.records.validate import SCHEMA_VERSION

    oldest = SCHEMA_VERSION if oldest is None else oldest
    path = Path(path)
    file = path / RESULTS_FILE if path.is_dir() else path
    try:
        text = files.read_bytes(file, "results").decode("utf-8")
    except FileNotFoundError:
        raise StoreError(f"{file}: no such file (expected a {RESULTS_FILE} or a run directory holding one)") from None
    except files.InputError as e:
        raise StoreError(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(f"{file}: cannot read it as text ({type(e).__name__})") from None
    records = parse_records(text, file, oldest)
    if not records:
        raise StoreError(f"{file}: no results records")
    return records
