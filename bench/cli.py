"""gradbench's command line: run suites, report, compare, export and reproduce results (`gradbench`,
`python -m gradbench`, or `python -m bench` in the repository).

Bad input exits with status 2 and one line naming the file, the key and what
is allowed; nothing is written. Ctrl-C stops a run between compiled calls,
keeps every finished group of cells and exits 130 with one line saying how to
resume (a second Ctrl-C stops at once).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
from pathlib import Path

from rich.console import Console

from gradbench.api import DEFAULT_SUITE, UsageError, start_backend as _backend


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (exit 2)."""

    def error(self, message):
        """Prints one line naming the flag and what is allowed, and exits 2."""
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _count(key):
    """An argparse type: an integer checked by a schema Key (the flag's range)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        try:
            return key.check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


class _Interrupts:
    """SIGINT while running: the first asks the run to stop between compiled calls, the second stops at once."""

    def __init__(self, out: Path):
        self.out, self.requested, self.previous = out, False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum, frame):
        del signum, frame
        if self.requested:
            os.write(2, f"interrupted again: stopped at once; finished cells are kept in {self.out / 'results.jsonl'}"
                        "; rerun the same command to resume\n".encode())
            os._exit(130)
        self.requested = True


def cmd_run(args) -> int:
    from gradbench import api

    # The flags and the suite file first (before jax is imported: one line, fast), then everything a run checks.
    prepared = api.prepare(args.suite, args.out, seeds=args.seeds, steps=args.steps, overrides=_set_values(args.set),
                           shard=args.shard, force=args.force, compile_cache=not args.no_compile_cache)
    from gradbench.engine import program, runner
    from gradbench.records import store
    from gradbench.reports import console

    suite, out, cells, cache = prepared.suite, prepared.out, prepared.cells, prepared.cache
    err, out_console = Console(stderr=True), Console(width=None if sys.stdout.isatty() else 140)
    compiles_before = dict(program.COMPILES)
    try:
        shown = contextlib.nullcontext() if args.quiet else console.GroupProgress(err)
        with _Interrupts(out) as interrupts, shown as progress:
            records = api.train(prepared, progress=progress, stop=lambda: interrupts.requested)
    except runner.OutOfMemory as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = store.ResultsStore(out).done() & {c.cell_id for c in cells} if (out / store.RESULTS_FILE).exists() \
            else set()
        print(f"interrupted: {len(kept)} of {len(cells)} cells are kept in {out / store.RESULTS_FILE} (the group in "
              "flight is not); rerun the same command to resume", file=sys.stderr)
        return 130
    writes_report = prepared.processes == 1 and not args.no_report
    if args.cells:
        out_console.print(console.summary_table(records))
    elif records:
        table, more = console.results_table(records, more=f"{out / 'REPORT.md'} or --cells" if writes_report
                                            else "--cells")
        out_console.print(table)
        if more:
            out_console.print(more, markup=False, soft_wrap=True)
    out_console.print(f"{len(records)} records in {out / store.RESULTS_FILE}", markup=False)
    out_console.print(f"compiled {program.COMPILES['programs'] - compiles_before['programs']} programs in "
                      f"{program.COMPILES['seconds'] - compiles_before['seconds']:.1f} s"
                      f"{'' if cache is None else f' (persistent cache: {cache})'}", markup=False)
    if prepared.processes > 1:
        out_console.print(f"process {prepared.process} of {prepared.processes} done; once every process is, write "
                          f"the report with `gradbench report {out}`", markup=False)
    elif writes_report:
        from gradbench.reports import report

        judged = report.judge(out)  # once: REPORT.md and the console table show the same verdicts
        written = report.write(out, judged=judged)
        if judged and len(records) == len(suite.cells):
            out_console.print(console.verdict_table(judged))
        out_console.print(f"report: {written}", markup=False)
    return 0


def cmd_cells(args) -> int:
    import json

    from gradbench import api
    from gradbench.reports import console

    overrides = _set_values(args.set)
    from gradbench.spec.settings import read_toml

    read_toml(args.suite)  # a bad suite file is one line, before jax is imported
    _backend()
    plan = api.plan(api.load_suite(args.suite, args.seeds, args.steps, overrides))
    suite, programs, (available, where) = plan["suite"], plan["programs"], plan["available"]
    largest = max(programs, key=lambda p: p["memory"]["total"])
    if args.json:
        print(json.dumps({"suite": suite.name, "path": suite.path, "cells": plan["cells"], "programs": programs,
                          "run_steps": plan["run_steps"], "devices": plan["devices"],
                          "available_memory": {"bytes": available, "where": where}}, indent=1, allow_nan=False))
        return 0
    out = Console(width=None if sys.stdout.isatty() else 140)
    by_id = {c.cell_id: c for c in suite.cells}
    out.print(console.cells_table([(by_id[c["cell_id"]], c["program"]) for c in plan["cells"]]))
    out.print(console.programs_table(programs))
    runs = sum(p["runs"] for p in programs)
    flops = sum(p["flops_per_run_step"] * p["run_steps"] for p in programs)
    fits = "fits" if largest["memory"]["total"] <= available else "does NOT fit (run refuses it)"
    out.print(f"{len(suite.cells)} cells, {runs:,} runs (cells x seeds) in {len(programs)} compiled programs; "
              f"{plan['run_steps']:,} run-steps at most (seeds that converge or diverge stop early), "
              f"{flops / 1e12:.3g} model TFLOP; the largest program needs about "
              f"{api.gib(largest['memory']['total'])} on each of {plan['devices']} device(s), which {fits} in the "
              f"{api.gib(available)} of {where}. Nothing was compiled or trained.", markup=False, soft_wrap=True)
    return 0


def cmd_report(args) -> int:
    from gradbench.spec import files
    from gradbench.records import store

    for directory in map(Path, [args.dir, *args.also]):
        if not (directory / store.RESULTS_FILE).exists() or not (directory / store.SUITE_FILE).exists():
            raise UsageError(f"{directory}: no results.jsonl and suite.json here (run `gradbench run` first)")
        store.read_suite(directory), store.read_results(directory)  # one line naming what is wrong, before jax
    from gradbench.reports import report

    output = args.output if args.output is not None else Path(args.dir) / "REPORT.md"
    output = files.check_output(output, "--output", reads=_inputs(args.dir, *args.also), overwrite=args.overwrite)
    try:
        print(report.write(args.dir, output, also=args.also))
    except ValueError as e:  # unreadable records or suite.json, or no records
        raise UsageError(str(e)) from None
    return 0


def _inputs(*directories) -> list[Path]:
    """The files a command reads from these results directories (or results files): no output may replace them."""
    from gradbench.records import store

    out = []
    for d in map(Path, directories):
        if d.is_dir():
            out += [d / store.RESULTS_FILE, d / store.SUITE_FILE]
        else:
            out += [d, d.parent / store.SUITE_FILE]
    return out


def _param(key) -> str:
    from gradbench.spec.schema import REQUIRED

    default = "required" if key.default is REQUIRED else "optional" if key.default is None \
        else f"default {key.default!r}"
    return (f"{key.doc}: " if key.doc else "") + f"{key.allowed()} ({default})"


def cmd_list(args) -> int:
    del args
    from rich.markup import escape
    from rich.table import Table

    from gradbench.spec import optim
    from gradbench.models import FAMILIES, common
    from gradbench.tasks import TASKS

    sections = {
        "model families": {k: m.DESCRIPTION for k, m in FAMILIES.items()},
        "tasks": {k: m.DESCRIPTION for k, m in TASKS.items()},
        "initialisers": {k: v[1] for k, v in common.INITIALISERS.items()},
        "activations": {k: v[1] for k, v in common.ACTIVATIONS.items()},
        "optimizers": {k: v[2] for k, v in optim.OPTIMIZERS.items()},
        "mitigations": {k: m.description + "".join(f"; {p}: {_param(key)}" for p, key in m.params.items())
                        for k, m in optim.MITIGATIONS.items()},
    }
    out = Console()
    for title, rows in sections.items():
        table = Table(title=title, title_justify="left", show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        for name, text in rows.items():
            table.add_row(escape(name), escape(text))
        out.print(table)
    return 0


def cmd_merge(args) -> int:
    from gradbench.records import store

    try:
        count = store.merge(args.out, args.dirs, allow_mixed=args.allow_mixed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"{count} records in {Path(args.out) / store.RESULTS_FILE}")
    return 0


def cmd_compare(args) -> int:
    import json

    from gradbench.analysis import compare

    try:
        baseline, current = (compare.load(p) for p in (args.baseline, args.current))
        result = compare.compare(baseline, current, alpha=args.alpha, throughput_threshold=args.throughput_threshold,
                                 judge_across_machines=args.judge_throughput_across_machines,
                                 fail_on_env_change=args.fail_on_env_change)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(result, indent=1, allow_nan=False))
    elif args.markdown:
        print(compare.markdown(result, args.all), end="")
    else:
        out = Console(width=None if sys.stdout.isatty() else 160)
        for line in compare.environment_lines(result):
            out.print(line, markup=False)
        out.print(compare.table(result, args.all))
        for line in compare.one_side(result) + compare.detectable_lines(result):
            out.print(line, markup=False)
        out.print(compare.summary(result), markup=False)
    return 1 if result["failed"] else 0


def cmd_export(args) -> int:
    from gradbench.spec import files
    from gradbench.records import store

    directory = Path(args.dir) if Path(args.dir).is_dir() else Path(args.dir).parent
    suffix = ".csv" if args.format == "tidy" else ".json"
    output = Path(args.output or directory / f"{args.format}{suffix}")
    try:
        records = store.read_results(args.dir)
        from gradbench.reports import export  # after the inputs are read: bad input is refused without jax

        if args.format != "tensorboard":
            output = files.check_output(output, "--output", reads=_inputs(args.dir), overwrite=args.overwrite)
            export.check_output(args.format, output)  # a suffix the format does not write: never another name
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.format == "tensorboard":
        target = Path(args.output if args.output is not None else directory / "tensorboard")
        if str(target) in ("", ".") or (target.exists() and not target.is_dir()):
            raise UsageError(f"--output {str(target)!r}: not a directory; allowed: a directory for the event files")
        try:
            written = export.write_tensorboard(records, target)
        except export.MissingExtra as e:
            raise UsageError(str(e)) from None
        print(f"{len(written)} cells in {target} (tensorboard --logdir {target})")
        return 0
    if args.format == "tidy" and output.suffix.lower() == ".parquet":  # Parquet alone, as asked
        if not export.write_parquet(export.tidy_rows(records), output):
            raise UsageError(f"--output {output}: Parquet needs pyarrow: pip install 'gradbench[parquet]' (or give "
                             "a .csv path)")
        print(output)
        return 0
    written = export.outputs(records, args.format, output)
    try:
        for path in [*written, *([output.with_suffix(".parquet")] if args.format == "tidy" else [])]:
            files.check_output(path, "--output", reads=_inputs(args.dir), overwrite=args.overwrite)
    except ValueError as e:  # every file is checked before the first is written
        raise UsageError(str(e)) from None
    for path, text in written.items():
        store.atomic_write(path, text)
        print(path)
    if args.format == "tidy" and export.write_parquet(export.tidy_rows(records), output.with_suffix(".parquet")):
        print(output.with_suffix(".parquet"))
    return 0


def cmd_reproduce(args) -> int:
    import tempfile

    from gradbench.records import store

    if args.out is not None and not args.out.strip():
        raise UsageError(f"--out {args.out!r}: an empty path; allowed: a new directory (default: a temporary one)")
    if args.out and (Path(args.out) / store.RESULTS_FILE).exists():
        raise UsageError(f"--out {args.out}: already holds results; give an empty or new directory")
    try:
        records = store.read_results(args.results)
        results_dir = Path(args.results) if Path(args.results).is_dir() else Path(args.results).parent
        if (results_dir / store.SUITE_FILE).exists():
            store.read_suite(results_dir)
    except ValueError as e:
        raise UsageError(str(e)) from None
    from gradbench.analysis import reproduce
    from gradbench.engine import compile_cache
    from gradbench.reports import console

    compile_cache.enable(not args.no_compile_cache)
    _backend()
    try:
        cells = reproduce.cells(records, args.cell)
    except ValueError as e:
        raise UsageError(str(e)) from None
    info = reproduce.suite_info(records, Path(args.results))
    wanted = {c.cell_id for c in cells}
    with tempfile.TemporaryDirectory(prefix="gradbench-reproduce-") as scratch, \
            console.GroupProgress(Console(stderr=True)) as progress:
        new = reproduce.rerun(cells, info, args.out or scratch, None if args.quiet else progress)
    rows = reproduce.judge([r for r in records if r["cell_id"] in wanted], new, args.throughput_threshold)
    out = Console(width=None if sys.stdout.isatty() else 160)
    out.print(reproduce.table(rows, f"reproduce: {len(cells)} cells of {args.results} rerun"))
    for line in reproduce.summary_lines(rows):
        out.print(line, markup=False)
    if args.out:
        out.print(f"rerun records in {Path(args.out) / store.RESULTS_FILE}", markup=False)
    return 1 if reproduce.not_reproduced(rows) else 0


def _fraction(low: float, high: float):
    """An argparse type: a float in [low, high]."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a number in [{low:g}, {high:g}], got {text!r}")
        return value
    return parse


def _set_values(pairs: list[str]) -> dict:
    """--set KEY=VALUE pairs, each VALUE read as a TOML value (a bare word is a string)."""
    import tomllib

    table = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set: expected KEY=VALUE, got {pair!r}")
        try:
            table[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            table[key] = value
    return table


def _plot_path(path: str) -> None:
    """Checks the --plot path's format and creates its directory; UsageError otherwise."""
    import matplotlib.figure

    formats = matplotlib.figure.Figure().canvas.get_supported_filetypes()
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix and suffix not in formats:
        raise UsageError(f"--plot {path}: unknown image format {suffix!r}; allowed: {', '.join(sorted(formats))}")
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--plot {path}: cannot create its directory ({e.strerror or type(e).__name__})") from None


def cmd_probe(args) -> int:
    import json

    from gradbench.engine import probe
    from gradbench.reports import plots
    from gradbench.spec.suite import canonical_section

    model = canonical_section("--set", "model", {"family": args.model, **_set_values(args.set)})
    task_table = {"name": args.task or probe.DEFAULT_TASK[args.model]}
    if args.batch is not None:
        task_table["batch_size"] = args.batch
    task = canonical_section("--task", "task", task_table)
    _backend()
    try:
        from gradbench.spec import build

        build.check(task, model)
        build.refuse_if_too_large(build.run_bytes(task, model), args.seeds, "--seeds, --set",
                                  f"probing {args.seeds} seeds at once")
    except (ValueError, OSError, OverflowError, MemoryError) as e:
        raise UsageError(f"--task {task['name']} with --model {model['family']}: {e}") from None
    if args.plot:
        _plot_path(args.plot)
    result = probe.probe(task, model, args.seeds)
    if args.plot:
        plots.gradient_profile({model["family"]: (result["axis"], result["per_seed"]["log10_preact_grad_norm"])},
                               args.plot)
    if args.json:
        print(json.dumps({"config": {"task": task, "model": model, "seeds": args.seeds},
                          **{k: v for k, v in result.items() if k != "per_seed"}}, allow_nan=False))
        return 0
    from rich.table import Table

    axis = result["axis"]
    table = Table(title=f"gradients at initialisation ({args.seeds} seeds, batch {task['batch_size']}); "
                        f"growth per {axis[:-1]}: {result['growth_per_layer']}; end-to-end ratio "
                        f"{result['e2e_ratio']}; degenerate seeds {result['degenerate_seeds']}")
    columns = [axis[:-1], "preact_grad_norm", "weight_grad_norm", "activation_rms"]
    for c in columns:
        table.add_column(c, justify="right")
    for row in result[axis]:
        table.add_row(*(f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in columns))
    Console().print(table)
    return 0


PEERS_SKIPPED = 3  # `bench peers` exit status when PyTorch is missing (nothing was compared)


def cmd_peers(args) -> int:
    from gradbench.engine import compile_cache
    from gradbench.peers import cases

    if not cases.torch_available():
        print("peers: skipped, PyTorch is not installed (pip install 'gradbench[peers]')")
        return PEERS_SKIPPED
    compile_cache.enable(not args.no_compile_cache)
    import jax
    from rich.table import Table

    names = args.case or list(cases.CASES)
    rows = cases.compare(names)
    if args.json:
        import json

        print(json.dumps(rows, indent=1, allow_nan=False))
        return 0
    table = Table(title=f"suite vs PyTorch {rows[0]['pytorch']['torch']} eager (at its fastest thread count and "
                        f"strategy), "
                        f"seed-steps/s: median [IQR] over timed chunks; JAX on {jax.devices()[0].device_kind}, "
                        f"{os.cpu_count()} CPUs")
    for column in ("case", "seeds x steps", "suite", "PyTorch", "suite / PyTorch"):
        table.add_column(column, justify="left" if column == "case" else "right")
    speed = lambda side: f"{side['seed_steps_per_s']:.0f} [{side['iqr'][0]:.0f}, {side['iqr'][1]:.0f}]"  # noqa: E731
    for row in rows:
        table.add_row(row["case"], f"{row['seeds']} x {row['steps']}", speed(row["suite"]),
                      f"{speed(row['pytorch'])} ({row['pytorch']['strategy']}, {row['pytorch']['threads']} threads)",
                      f"{row['ratio']:.2f}x")
    Console(width=None if sys.stdout.isatty() else 140).print(table)
    return 0


def version() -> str:
    """`gradbench VERSION` from the installed package's metadata."""
    from importlib import metadata

    try:
        return f"gradbench {metadata.version('gradbench')}"
    except metadata.PackageNotFoundError:
        return "gradbench (not installed: version unknown)"


SET_HELP = ("override a key (repeatable): a bare KEY is a [suite] setting (init_perturbation=1e-6; seeds=4 and "
            "steps=N are --seeds and --steps), SECTION.KEY a key of every experiment's task, model or optimizer "
            "table, or a parameter of every mitigation that has it (model.depth=8, task.n_train=256, "
            "mitigation.max_norm=2.0); a VALUE is read as TOML, a list is a grid axis (optimizer.lr=[0.01,0.1])")


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from gradbench.reports.console import TABLE_ROWS
    from gradbench.spec.schema import Key
    from gradbench.spec.settings import MAX_SEEDS, SETTINGS

    seeds, steps = _count(SETTINGS["seeds"]), _count(SETTINGS["steps"])
    p = Parser(prog="gradbench", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=version())
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train every cell of a suite and record results")
    run.add_argument("suite", nargs="?", default=str(DEFAULT_SUITE), help="suite TOML (default: the default suite)")
    run.add_argument("--out", help="output directory (default: runs/SUITE_NAME); reruns resume")
    run.add_argument("--seeds", type=seeds, help=f"seeds of every cell (1 to {MAX_SEEDS}); overrides the suite's "
                     "and every experiment's own seeds")
    run.add_argument("--steps", type=steps, help="step budget of every cell (>= 1); overrides the suite's and "
                     "every experiment's own steps")
    run.add_argument("--force", action="store_true", help="use --out even if it holds another suite's records, "
                     "records from other --seeds/--steps (they are discarded), or records made under other code or "
                     "library versions (jax, jaxlib, flax, optax, numpy, Python; their cells train again)")
    run.add_argument("--shard", default="0/1", help="run shard i of n (e.g. 0/4): whole compiled groups of cells, "
                     "dealt by cost (runs x steps), never one split")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--no-report", action="store_true", help="do not write DIR/REPORT.md at the end")
    run.add_argument("--cells", action="store_true", help="end with one row per cell, every cell (default: a "
                     f"compact table, one row per cell up to {TABLE_ROWS} cells, else one per arm; then the verdicts, "
                     "when the suite has claims)")
    run.add_argument("--no-compile-cache", action="store_true", help="do not use the persistent compilation cache "
                     "(default: $XDG_CACHE_HOME/gradbench/jax or ~/.cache/gradbench/jax; GRADBENCH_CACHE_DIR sets it, "
                     "GRADBENCH_COMPILE_CACHE=0 turns it off)")
    run.set_defaults(func=cmd_run)
    cls = sub.add_parser("cells", help="list a suite's cells, its compiled programs and their cost, without "
                         "training or compiling", description="The cells (experiment, label, seeds, steps, program), "
                         "the compiled programs (cells that differ only in traced values share one) with their "
                         "runs, run-steps, model FLOPs and memory estimate (traced abstractly, as run's memory check "
                         "does). Exit status: 0, or 2 bad input.")
    cls.add_argument("suite", nargs="?", default=str(DEFAULT_SUITE), help="suite TOML (default: the default suite)")
    cls.add_argument("--seeds", type=seeds, help="seeds of every cell, as for run")
    cls.add_argument("--steps", type=steps, help="step budget of every cell, as for run")
    cls.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    cls.add_argument("--json", action="store_true", help="print one JSON object (cells, programs, run_steps, "
                     "devices, available_memory)")
    cls.set_defaults(func=cmd_cells)
    lst = sub.add_parser("list", help="list model families, tasks, initialisers, activations, optimizers, mitigations")
    lst.set_defaults(func=cmd_list)
    rep = sub.add_parser("report", help="write a Markdown report with plots and verdicts from a results directory")
    rep.add_argument("dir", help="results directory (results.jsonl and suite.json)")
    rep.add_argument("--output", help="report path (default: DIR/REPORT.md)")
    rep.add_argument("--overwrite", action="store_true", help="let --output replace a file the report reads or a "
                     "results directory's own file (results.jsonl, suite.json, ...); refused without it")
    rep.add_argument("--also", action="append", default=[], metavar="DIR",
                     help="another results directory, appended as a section 'Beyond the article', its claims "
                          "answered in the first page's table (repeatable)")
    rep.set_defaults(func=cmd_report)
    mrg = sub.add_parser("merge", help="merge the results directories of --shard i/n jobs")
    mrg.add_argument("out", help="output directory")
    mrg.add_argument("dirs", nargs="+", help="the shards' results directories")
    mrg.add_argument("--allow-mixed", action="store_true", help="merge records made at different commits, code or "
                     "library versions (duplicate cells and different suites are always refused)")
    mrg.set_defaults(func=cmd_merge)
    prb = sub.add_parser("probe", help="gradient norms per layer (or time step) at initialisation")
    prb.add_argument("--model", required=True, help="model family")
    prb.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a [model] key (repeatable)")
    prb.add_argument("--task", help="task (default: one that fits the family)")
    prb.add_argument("--batch", type=_count(Key(int, ge=1)), help="batch size (default: the task's)")
    prb.add_argument("--seeds", type=seeds, default=8, help="seeds (default 8)")
    prb.add_argument("--json", action="store_true", help="print one JSON object")
    prb.add_argument("--plot", help="save a PNG of the per-layer gradient norms")
    prb.set_defaults(func=cmd_probe)
    cmp = sub.add_parser("compare", help="compare two runs cell by cell (exit 1 when something regressed)",
                         description="Pairs records by cell_id; Fisher's exact test for rates, Mann-Whitney for "
                         "per-seed values, Holm-corrected over all cells x metrics; throughput as a ratio, "
                         "each side normalised by its run's yardstick, worse only below both "
                         "--throughput-threshold and the noise band of the two runs' timed chunks. Prints, per "
                         "metric, the smallest regression of one cell it can detect with these seeds. It first "
                         "lists every difference of the two runs' environments; throughput from other machines is "
                         "reported, not judged. Exit status: 0 nothing regressed, 1 regressed (or the environment "
                         "changed, with --fail-on-env-change), 2 bad input.")
    cmp.add_argument("baseline", help="baseline results.jsonl or run directory")
    cmp.add_argument("current", help="current results.jsonl or run directory")
    cmp.add_argument("--alpha", type=_fraction(0.0, 1.0), default=0.05,
                     help="family-wise error rate (Holm) (default 0.05)")
    cmp.add_argument("--throughput-threshold", type=_fraction(0.0, 1.0), default=0.8,
                     help="normalised steps/s ratio current/baseline below which throughput is worse (when "
                          "also below the noise band); 0 turns the check off (default 0.8)")
    cmp.add_argument("--fail-on-env-change", action="store_true",
                     help="exit 1 when the environment differs (library versions, Python, backend, devices, CPU "
                          "model, XLA flags; not the code under test), whatever the verdicts")
    cmp.add_argument("--judge-throughput-across-machines", action="store_true",
                     help="judge throughput even when the runs were made on other machines (CPU model or cores, "
                          "backend, device kind or count); by default it is reported only")
    cmp.add_argument("--all", action="store_true", help="list unchanged cell-metrics too")
    fmt = cmp.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON object")
    fmt.add_argument("--markdown", action="store_true", help="print Markdown (a pull-request comment)")
    cmp.set_defaults(func=cmd_compare)
    exp = sub.add_parser("export", help="write results for CI dashboards (pytest-benchmark, github-action-benchmark), "
                         "analysis (tidy CSV/Parquet) or TensorBoard",
                         description="Exit status: 0 written, 2 bad input or a missing optional extra (nothing "
                                     "written). JSON files are strict (no NaN or Infinity tokens).")
    exp.add_argument("dir", help="run directory or results.jsonl")
    exp.add_argument("--format", required=True, choices=export_formats(),
                     help="pytest-benchmark: one saved run, one benchmark per compiled program, a round per "
                          "timed chunk, ops = steps/s normalised by the run's yardstick (raw steps/s in extra_info; "
                          "`pytest-benchmark compare` loads it); github-action-benchmark: OUTPUT-bigger.json "
                          "(customBiggerIsBetter: normalised steps/s per program, raw in extra) and "
                          "OUTPUT-smaller.json (customSmallerIsBetter, per cell: 1 + divergence rate, 1 + failure "
                          "rate, 1 + steps to converge); tidy: one row per cell x seed with the program's throughput "
                          "and the versions, as CSV (and Parquet beside it with pyarrow) or Parquet; tensorboard: "
                          "event files per cell (needs the tensorboard extra)")
    exp.add_argument("--output", help="output file, ending in .json (pytest-benchmark, github-action-benchmark) or "
                                      ".csv or .parquet (tidy) (default: DIR/FORMAT.json, DIR/tidy.csv) or, for "
                                      "tensorboard, directory (default: DIR/tensorboard)")
    exp.add_argument("--overwrite", action="store_true", help="let --output replace the results it reads or a results "
                     "directory's own file (results.jsonl, suite.json, ...); refused without it")
    exp.set_defaults(func=cmd_export)
    rpr = sub.add_parser("reproduce", help="rerun recorded cells from their stored config and compare the numbers",
                         description="Exit status: 0 every metric identical or within noise (throughput only "
                         "reported), 1 some metric different, 2 bad input.")
    rpr.add_argument("results", help="results.jsonl or run directory")
    rpr.add_argument("--cell", action="append", metavar="CELL_ID", help="rerun this cell only (repeatable; "
                     "default: every cell)")
    rpr.add_argument("--out", help="keep the rerun's records in this new directory (default: a temporary one)")
    rpr.add_argument("--throughput-threshold", type=_fraction(0.0, 1.0), default=0.8,
                     help="steps/s ratio below which throughput counts as different (default 0.8)")
    rpr.add_argument("--quiet", action="store_true", help="no progress display")
    rpr.add_argument("--no-compile-cache", action="store_true", help="do not use the persistent compilation cache")
    rpr.set_defaults(func=cmd_reproduce)
    per = sub.add_parser("peers", help="the suite vs an idiomatic PyTorch eager loop on the same cases (seed-steps/s)",
                         description="Needs PyTorch (pip install 'gradbench[peers]'); without it, one line says "
                                     f"it was skipped. Exit status: 0 compared, {PEERS_SKIPPED} skipped (no PyTorch), "
                                     "2 bad input.")
    per.add_argument("--case", action="append", choices=sorted(_peer_cases()), help="run this case only "
                     "(repeatable; default: every case)")
    per.add_argument("--json", action="store_true", help="print one JSON array")
    per.add_argument("--no-compile-cache", action="store_true", help="do not use the persistent compilation cache")
    per.set_defaults(func=cmd_peers)
    return p


def export_formats():
    from gradbench.reports.export import FORMATS

    return FORMATS


def _peer_cases():
    from gradbench.peers.cases import CASES

    return CASES


def main(argv=None) -> int:
    """Entry point; returns the exit status."""
    from gradbench.spec.files import InputError
    from gradbench.records.store import StoreError
    from gradbench.spec.schema import SuiteError

    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag (one line already printed)
        return e.code
    try:
        return args.func(args)
    except (SuiteError, UsageError, StoreError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a filesystem fault outside the results store
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
