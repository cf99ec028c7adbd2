"""Command line: python -m bench {run,list} ...

Bad input exits with status 2 and one line naming the file, the key and what
is allowed; nothing is written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

DEFAULT_SUITE = Path(__file__).parent / "suites" / "default.toml"


class UsageError(Exception):
    """Bad command-line input (exit 2)."""


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(p) for p in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard: expected i/n such as 0/4, got {text!r}") from None
    if not 0 <= index < count:
        raise UsageError(f"--shard: need 0 <= i < n, got {text!r}")
    return index, count


def cmd_run(args) -> int:
    from bench import console, runner, suite as suite_lib

    suite = suite_lib.load(args.suite, seeds=args.seeds, steps=args.steps)
    shard = _shard(args.shard)
    out = Path(args.out or Path("runs") / suite.name)
    err, out_console = Console(stderr=True), Console(width=None if sys.stdout.isatty() else 140)
    with console.GroupProgress(err) as progress:
        records = runner.run_suite(suite, out, shard, progress=None if args.quiet else progress.factory)
    out_console.print(console.summary_table(records))
    out_console.print(f"{len(records)} records in {out / 'results.jsonl'}")
    return 0


def cmd_list(args) -> int:
    del args
    from rich.table import Table

    from bench import optim
    from models import FAMILIES, common
    from tasks import TASKS

    sections = {
        "model families": {k: m.DESCRIPTION for k, m in FAMILIES.items()},
        "tasks": {k: m.DESCRIPTION for k, m in TASKS.items()},
        "initialisers": {k: v[1] for k, v in common.INITIALISERS.items()},
        "activations": {k: v[1] for k, v in common.ACTIVATIONS.items()},
        "optimizers": {k: v[2] for k, v in optim.OPTIMIZERS.items()},
        "mitigations": {k: m.description + (" [" + ", ".join(f"{p}={d!r}" for p, d in m.params.items()) + "]"
                                            if m.params else "") for k, m in optim.MITIGATIONS.items()},
    }
    out = Console()
    for title, rows in sections.items():
        table = Table(title=title, title_justify="left", show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        for name, text in rows.items():
            table.add_row(name, text.replace("Ellipsis", "required"))
        out.print(table)
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train every cell of a suite and record results")
    run.add_argument("suite", nargs="?", default=str(DEFAULT_SUITE), help="suite TOML (default: the default suite)")
    run.add_argument("--out", help="output directory (default: runs/SUITE_NAME); reruns resume")
    run.add_argument("--seeds", type=int, help="override the number of seeds")
    run.add_argument("--steps", type=int, help="override the step budget")
    run.add_argument("--shard", default="0/1", help="run shard i of n of the cells (e.g. 0/4)")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.set_defaults(func=cmd_run)
    lst = sub.add_parser("list", help="list model families, tasks, initialisers, activations, optimizers, mitigations")
    lst.set_defaults(func=cmd_list)
    return p


def main(argv=None) -> int:
    """Entry point; returns the exit status."""
    from bench.suite import SuiteError

    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (SuiteError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
