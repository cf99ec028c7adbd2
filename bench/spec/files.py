"""Reading the files a command is given, and guarding the files it writes (no jax, no numpy: the CLI's fast path).

Every input file is read through `read_bytes`: only a regular file, at most a size limit, opened without
blocking, so a FIFO, a device (/dev/zero) or a huge file is refused in one line instead of hanging or
exhausting memory. Every output path a user names goes through `check_output`, which refuses to write over
a file the command reads or over a results directory's own files unless told to (a flag).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

MIB = 2**20
# Largest input accepted, by kind (the committed claims results are 41 MiB).
LIMITS = {"suite": 16 * MIB, "json": 256 * MIB, "results": 4096 * MIB}
# The files of a results directory that no report or export may replace (gradbench.records.store writes them).
PROTECTED = ("results.jsonl", "suite.json", "not_run.json", "results.jsonl.lock")


class InputError(ValueError):
    """A path that cannot be read as the input asked for; the message names the path and says why (exit 2)."""


def _size(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / MIB:.3g} MiB"


def read_bytes(path, kind: str) -> bytes:
    """The bytes of `path`, a regular file of at most LIMITS[kind] bytes; InputError (naming `path`) otherwise.

    FileNotFoundError and IsADirectoryError are raised as they are (callers word them for their input).
    """
    path = Path(path)
    limit = LIMITS[kind]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))  # a FIFO opens at once
    except (FileNotFoundError, IsADirectoryError):
        raise
    except PermissionError:
        raise InputError(f"{path}: not readable (permission denied)") from None
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(21, "Is a directory", str(path))
        if not stat.S_ISREG(info.st_mode):
            what = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device" if \
                stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a socket or other special file"
            raise InputError(f"{path}: is {what}, not a regular file; allowed: a file")
        if info.st_size > limit:
            raise InputError(f"{path}: {_size(info.st_size)} is larger than this input may be ({_size(limit)}); "
                             "allowed: a file of that size or less")
        chunks, total = [], 0
        while True:
            try:
                chunk = os.read(fd, min(MIB, limit + 1 - total))
            except OSError as e:
                raise InputError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grew while read
                raise InputError(f"{path}: larger than this input may be ({_size(limit)}); allowed: a file of "
                                 "that size or less")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path, flag: str, reads=(), overwrite: bool = False) -> Path:
    """`path` as an output the user named with `flag`; InputError (naming it) if writing there would be wrong.

    Refused always: an empty path, a directory (where a file is wanted), a special file. Refused unless
    `overwrite` (the command's --overwrite): a file the command reads (`reads`) and an existing file named like
    one of a results directory's own files (PROTECTED), e.g. `report --output DIR/results.jsonl`.
    """
    if not str(path).strip():
        raise InputError(f"{flag} {str(path)!r}: an empty path; allowed: a file path")
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a directory; allowed: a file path (the directory holds it)")
    if path.exists() and not path.is_file():
        raise InputError(f"{flag} {path}: exists and is not a regular file; allowed: a file path")
    if overwrite:
        return path
    for read in map(Path, reads):
        if path.resolve() == read.resolve() or _same(path, read):
            raise InputError(f"{flag} {path}: is {read}, which this command reads: writing there would destroy "
                             "it; allowed: another file, or --overwrite to replace it")
    if path.exists() and path.name in PROTECTED:
        raise InputError(f"{flag} {path}: would replace a results directory's {path.name}; allowed: another "
                         "file, or --overwrite to replace it")
    return path
