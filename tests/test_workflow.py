"""The example CI workflow: its `python -m bench` commands, run locally on a tiny suite, and its baseline."""
import contextlib
import io
import re
import shlex
from pathlib import Path

from bench.__main__ import main
from bench.records import store
from bench.spec import suite

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "bench.yml"


def workflow_commands() -> list[list[str]]:
    """The arguments of every `python -m bench ...` command of the workflow, in order (up to a pipe)."""
    return [shlex.split(m) for m in re.findall(r"python -m bench ([^|>\n]+)", WORKFLOW.read_text())]


def test_the_committed_baseline_holds_every_cell_of_the_ci_suite():
    cells = suite.load(ROOT / "bench" / "suites" / "ci.toml").cells
    baseline = store.read_results(ROOT / "results" / "ci")
    assert [r["cell_id"] for r in baseline] == [c.cell_id for c in cells]
    assert all(not r["env"]["git_dirty"] and r["env"]["code_sha256"] for r in baseline)


def test_the_workflow_commands_pass_on_a_tiny_suite(tiny_run, tmp_path):
    commands = workflow_commands()
    assert [c[0] for c in commands] == ["run", "compare", "export", "export"]
    paths = {"bench/suites/ci.toml": str(tiny_run.parent / "suite.toml"), "results/ci": str(tiny_run),
             "runs/ci": str(tmp_path / "runs" / "ci")}
    for args in commands:
        args = [paths.get(a, a) for a in args]
        if "--throughput-threshold" in args:  # a unit test judges no timings: the statistical checks only
            args[args.index("--throughput-threshold") + 1] = "0"
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            status = main(args)
        assert status == 0, (args, out.getvalue())
        if args[0] == "compare":
            assert "Nothing regressed" in out.getvalue() and "2 cells paired" in out.getvalue()
    run = tmp_path / "runs" / "ci"
    for name in ("results.jsonl", "pytest-benchmark.json", "github-action-benchmark-bigger.json",
                 "github-action-benchmark-smaller.json"):
        assert (run / name).exists(), name
