"""The example CI workflow: its `python -m bench` commands, run locally on a tiny suite, and its baseline; the
constraints it installs; the A/B script (.ci/ab) it runs."""
import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from gradbench.cli import main, parser
from gradbench.analysis import compare
from gradbench.records import store
from gradbench.spec import suite

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "bench.yml"
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"
AB = ROOT / ".ci" / "ab"


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
        if args[0] == "compare":  # a unit test judges no timings: the statistical checks only
            args += ["--throughput-threshold", "0"]
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


def test_the_workflow_gates_at_compares_default_threshold():
    text = WORKFLOW.read_text()
    assert "--throughput-threshold" not in text  # the default is the workflow's
    default = parser().parse_args(["compare", "a", "b"]).throughput_threshold
    assert default == compare.THROUGHPUT_THRESHOLD == 0.8
    assert ".ci/ab --baseline" in text and "pip install -c .ci/constraints.txt" in text
    assert "pip install -q -c .ci/constraints.txt" in (ROOT / ".ci" / "run").read_text()


def pins() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            out[req.name.lower().replace("_", "-")] = spec.version
    return out


def test_the_constraints_pin_the_versions_the_committed_results_were_made_with():
    pinned = pins()
    for directory in ("claims", "transformer_stability", "ci"):
        for record in store.read_results(ROOT / "results" / directory):
            for name, version in record["env"]["versions"].items():
                assert pinned[name] == version, (directory, name, version, pinned.get(name))
            assert record["env"]["python"].rsplit(".", 1)[0] == "3.11"  # the workflow's Python
    assert 'python-version: "3.11"' in WORKFLOW.read_text()


def test_the_projects_bounds_admit_python_3_11_and_3_12_releases():
    """pyproject.toml keeps lower bounds: the pinned set (Python 3.11, jax 0.10.2, flax 0.12.8) and Python 3.12's
    jax 0.11.2 both satisfy them."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = pins()
    for line in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = Requirement(line)
        assert req.specifier.contains(pinned[req.name.lower()]), line
    jax = next(Requirement(d) for d in project["dependencies"] if d.startswith("jax"))
    assert jax.specifier.contains("0.11.2") and jax.specifier.contains("0.10.2")
    assert project["requires-python"] == ">=3.11"


def ab(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(AB), *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_ab_plans_one_environment_per_constraints_file(tmp_path):
    py = sys.executable
    # A code change under the job's interpreter: no environment made, the baseline checked out apart.
    done = ab("--baseline", "HEAD", "--python", py, "--out", str(tmp_path / "ab"), "--dry-run", "--", "--markdown")
    assert done.returncode == 0, done.stderr
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    assert lines[0].startswith(f"git clone --quiet --shared --no-checkout {ROOT} {tmp_path / 'ab' / 'code-baseline'}")
    assert lines[0].endswith(f"checkout --quiet --detach {head}")
    assert lines[1:] == [
        f"PYTHONPATH={tmp_path / 'ab' / 'code-baseline'} {py} -m bench run {ROOT / 'bench/suites/ci.toml'} --out "
        f"{tmp_path / 'ab' / 'baseline'} --quiet --no-report",
        f"PYTHONPATH={ROOT} {py} -m bench run {ROOT / 'bench/suites/ci.toml'} --out {tmp_path / 'ab' / 'candidate'} "
        "--quiet --no-report",
        f"PYTHONPATH={ROOT} {py} -m bench compare {tmp_path / 'ab' / 'baseline'} {tmp_path / 'ab' / 'candidate'} "
        "--markdown"]
    # A dependency bump: the baseline's constraints differ, so it gets an environment of its own.
    old = tmp_path / "old.txt"
    old.write_text(CONSTRAINTS.read_text().replace("jax==", "jax==0.0.1\n# was ").replace("jaxlib==", "jaxlib=="))
    done = ab("--baseline-constraints", str(old), "--python", py, "--out", str(tmp_path / "bump"), "--dry-run")
    assert done.returncode == 0, done.stderr
    venvs = re.findall(r"-m venv (\S+)", done.stdout)
    assert len(venvs) == 1 and re.search(rf"{re.escape(venvs[0])}/bin/python -m pip install -q -c \S+constraints-"
                                         rf"\w+\.txt '?{re.escape(str(ROOT))}\[test\]", done.stdout)
    runs = re.findall(r"^PYTHONPATH=(\S+) (\S+) -m bench run .* --out (\S+)", done.stdout, re.M)
    assert runs == [(str(ROOT), f"{venvs[0]}/bin/python", str(tmp_path / "bump" / "baseline")),
                    (str(ROOT), py, str(tmp_path / "bump" / "candidate"))]
    # Without an interpreter: one environment per distinct file, shared by sides whose files agree.
    done = ab("--out", str(tmp_path / "fresh"), "--dry-run")
    assert done.returncode == 0 and len(re.findall(r"-m venv ", done.stdout)) == 1
    assert not (tmp_path / "ab").exists() and not (tmp_path / "fresh").exists()  # a dry run writes nothing


@pytest.mark.parametrize("args, words", [
    (["--baseline", "no-such-ref"], "--baseline no-such-ref: not a commit of"),
    (["--suite", "nowhere.toml"], "--suite nowhere.toml: no such file"),
    (["--baseline-constraints", "nowhere.txt"], "--baseline-constraints nowhere.txt: No such file"),
])
def test_ab_refuses_bad_input_on_one_line(tmp_path, args, words):
    done = ab(*args, "--python", sys.executable, "--out", str(tmp_path / "ab"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
    assert not (tmp_path / "ab").exists()


def test_ab_refuses_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "keep.txt").write_text("results")
    done = ab("--python", sys.executable, "--out", str(tmp_path))
    assert done.returncode == 2 and "was not made by .ci/ab" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_ab_of_an_unchanged_checkout_passes(tiny_run, tmp_path):
    """.ci/ab against HEAD on a tiny suite: exit 0, the same numbers on both sides (docs/CI.md gives the CI suite's
    A/A run twice on this machine)."""
    out = tmp_path / "ab"
    suite_file = tiny_run.parent / "suite.toml"
    (out / "baseline").mkdir(parents=True)
    (out / "ab.json").write_text("{}")  # a directory .ci/ab made before: its runs are replaced
    (out / "baseline" / "results.jsonl").write_text("stale\n")
    for attempt in range(1):
        done = ab("--baseline", "HEAD", "--python", sys.executable, "--suite", str(suite_file), "--out", str(out),
                  "--", "--json", "--throughput-threshold", "0")  # a unit test judges no timings
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads((out / "compare.json").read_text())
        assert result == json.loads(done.stdout) and result["paired"] == 2 and not result["failed"]
        assert not [d for d in result["environment"]["differences"] if d["kind"] != "code"]
        base, cand = (store.read_results(out / side) for side in ("baseline", "candidate"))
        assert [r["per_seed"] for r in base] == [r["per_seed"] for r in cand]  # same code, same numbers
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        assert {r["env"]["git_commit"] for r in base} == {head}
        assert json.loads((out / "ab.json").read_text())["sides"]["baseline"]["commit"] == head
        assert "[ab] compare" in done.stderr
