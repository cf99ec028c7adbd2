"""Reliability (issue 34) by class: no command destroys results, traces back or hangs on input it did not expect.

Data loss, oversized work, malformed files, silent wrong results, hangs, unclear messages and valid input that
failed; stale resume (records of other code or library versions never reused); verdicts judged once per run;
a CLI that reports bad input without importing jax.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gradbench.cli import main
from gradbench.records import store
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
TINY4 = TINY.format(seeds=2, steps=4, lr="[0.05, 0.5]", extra="")


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A finished tiny run (two cells): copied by each test that breaks it."""
    directory = tmp_path_factory.mktemp("done")
    (directory / "suite.toml").write_text(TINY4)
    assert main(["run", str(directory / "suite.toml"), "--out", str(directory / "run"), "--quiet"]) == 0
    return directory / "run"


def _copy(done, tmp_path, name="d") -> Path:
    out = tmp_path / name
    shutil.copytree(done, out)
    return out


def _tree(path: Path) -> dict:
    """Every file under `path` -> its bytes (what 'nothing written, nothing lost' compares)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != "results.jsonl.lock"}


def _one_line(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def _rewrite(directory: Path, edit) -> None:
    """Applies `edit(records)` (a list of dicts it may change or replace) to a directory's results.jsonl."""
    path = directory / "results.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in edit(records)))


def _set(path: str, value):
    def edit(records):
        target = records[0]
        *parents, last = path.split(".")
        for key in parents:
            target = target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
        return records
    return edit


# ---- data loss: no output replaces what the command reads or a results directory's own files -----------------------

@pytest.mark.parametrize("argv", [
    ["report", "{d}", "--output", "{d}/results.jsonl"],
    ["report", "{d}", "--output", "{d}/suite.json"],
    ["report", "{d}", "--output", "{d}/../d/./results.jsonl"],
    ["export", "{d}", "--format", "pytest-benchmark", "--output", "{d}/results.jsonl"],
    ["export", "{d}", "--format", "pytest-benchmark", "--output", "{d}/suite.json"],
    ["export", "{d}/results.jsonl", "--format", "pytest-benchmark", "--output", "{d}/results.jsonl"],
    ["export", "{d}", "--format", "pytest-benchmark", "--output", "{other}/results.jsonl"],  # another run's
])
def test_no_output_replaces_results_without_overwrite(done, tmp_path, capsys, argv):
    d, other = _copy(done, tmp_path), _copy(done, tmp_path, "other")
    before = _tree(tmp_path)
    assert main([a.format(d=d, other=other) for a in argv]) == 2
    _one_line(capsys, "--output", "--overwrite")
    assert _tree(tmp_path) == before


def test_overwrite_flag_lets_an_output_replace_a_results_file(done, tmp_path, capsys):
    d = _copy(done, tmp_path)
    assert main(["export", str(d), "--format", "pytest-benchmark", "--output", str(d / "suite.json"),
                 "--overwrite"]) == 0
    assert "benchmarks" in json.loads((d / "suite.json").read_text())


@pytest.mark.parametrize("argv, words", [
    (["report", "{d}", "--output", "{d}/plots"], ["--output {d}/plots", "is a directory"]),
    (["report", "{d}", "--output", ""], ["--output ''", "empty path"]),
    (["export", "{d}", "--format", "tidy", "--output", " "], ["--output ' '", "empty path"]),
    (["export", "{d}", "--format", "pytest-benchmark", "--output", "{d}/plots"], ["{d}/plots", "is a directory"]),
    (["export", "{d}", "--format", "tensorboard", "--output", "{d}/results.jsonl"], ["not a directory"]),
])
def test_bad_output_paths_are_named_as_given(done, tmp_path, capsys, argv, words):
    d = _copy(done, tmp_path)
    before = _tree(tmp_path)
    assert main([a.format(d=d) for a in argv]) == 2
    err = _one_line(capsys, *[w.format(d=d) for w in words])
    assert ".REPORT.md." not in err and "tmp" not in err.replace(str(tmp_path), "")  # never a temporary file
    assert _tree(tmp_path) == before


def test_atomic_write_names_the_users_path_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "REPORT.md").mkdir()
    with pytest.raises(OSError) as info:
        store.atomic_write(tmp_path / "REPORT.md", "x")
    assert info.value.filename == str(tmp_path / "REPORT.md")
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        if os.access(tmp_path / "ro", os.W_OK):
            pytest.skip("running as a user who may write anywhere")
        with pytest.raises(OSError) as info:
            store.atomic_write(tmp_path / "ro" / "x.json", "x")
        assert info.value.filename == str(tmp_path / "ro" / "x.json")
    finally:
        os.chmod(tmp_path / "ro", 0o700)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["REPORT.md", "ro"]


# ---- malformed files: one line naming the file, the line and the key; exit 2; nothing written ---------------------

BROKEN_RECORDS = {  # name -> (edit of the records, words of the message)
    "no diverged": (_set("per_seed.diverged", KeyError), ["line 1", "per_seed.diverged", "missing"]),
    "no per_seed": (_set("per_seed", KeyError), ["line 1", "per_seed", "missing"]),
    "per_seed too short": (_set("per_seed.final_train_loss", [0.1]), ["per_seed.final_train_loss", "1 values",
                                                                      "2 seeds"]),
    "diverged not bool": (_set("per_seed.diverged", [1, 0]), ["per_seed.diverged[0]", "true or false"]),
    "throughput 0": (_set("throughput.steps_per_s", 0), ["throughput.steps_per_s", "a number > 0"]),
    "seeds a string": (_set("config.seeds", "2"), ["config.seeds", "an integer"]),
    "versions missing": (_set("env.versions", {}), ["env.versions.jax", "missing"]),
    "record a list": (lambda recs: [[1, 2]] + recs[1:], ["line 1", "a results record"]),
    "duplicate line": (lambda recs: recs + recs[:1], ["line 3", "repeats line 1", "the same record"]),
    "two records of one cell": (lambda recs: recs + [{**recs[0], "label": "x"}], ["line 3", "repeats line 1",
                                                                                  "another record"]),
    "older schema": (_set("schema_version", 1), ["line 1", "schema_version 1", "older gradbench"]),
}


def _nan_token(directory: Path) -> None:
    path = directory / "results.jsonl"
    first, *rest = path.read_text().splitlines()
    record = json.loads(first)
    record["throughput"]["steps_per_s"] = float("nan")
    path.write_text("\n".join([json.dumps(record), *rest]) + "\n")  # json.dumps writes the NaN token


COMMANDS = {
    "report": lambda d, t: ["report", str(d)],
    "export": lambda d, t: ["export", str(d), "--format", "tidy"],
    "compare": lambda d, t: ["compare", str(d), str(d)],
    "merge": lambda d, t: ["merge", str(t / "merged"), str(d)],
    "resume": lambda d, t: ["run", str(t / "suite.toml"), "--out", str(d), "--quiet"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", [*BROKEN_RECORDS, "NaN token"])
def test_broken_records_are_one_line_naming_file_line_and_key(done, tmp_path, capsys, name, command):
    d = _copy(done, tmp_path)
    (tmp_path / "suite.toml").write_text(TINY4)
    if name == "NaN token":
        _nan_token(d)
        words = ["line 1", "throughput.steps_per_s", "NaN"]
    else:
        edit, words = BROKEN_RECORDS[name]
        _rewrite(d, edit)
    if command == "compare" and name == "older schema":
        return  # compare reads every schema it knows (tests/test_compare.py)
    if command == "resume" and name == "older schema":
        words = ["1 records", "older gradbench", "schema_version < 2", "--force"]  # retrained with --force
    before = _tree(tmp_path)
    assert main(COMMANDS[command](d, tmp_path)) == 2
    err = _one_line(capsys, *words)
    assert "results.jsonl" in err
    assert _tree(tmp_path) == before


BROKEN_SUITE_JSON = {
    "a list": ("[1, 2]", ["suite.json", "top level", "an object"]),
    "no settings": (lambda s: {k: v for k, v in s.items() if k != "settings"}, ["suite.json", "settings",
                                                                                "missing"]),
    "no path": (lambda s: {k: v for k, v in s.items() if k != "path"}, ["suite.json", "path", "missing"]),
    "claims an object": (lambda s: {**s, "claims": {}}, ["suite.json", "claims", "a list"]),
    "corrupt": ('{"name": "tiny"', ["suite.json", "not valid JSON", "line 1"]),
    "NaN token": (lambda s: {**s, "settings": {**s["settings"], "min_effect": float("nan")}},
                  ["suite.json", "settings.min_effect", "NaN"]),
}


@pytest.mark.parametrize("command", ["report", "merge", "reproduce", "resume"])
@pytest.mark.parametrize("name", BROKEN_SUITE_JSON)
def test_broken_suite_json_is_one_line_naming_the_key(done, tmp_path, capsys, name, command):
    d = _copy(done, tmp_path)
    (tmp_path / "suite.toml").write_text(TINY4)
    change, words = BROKEN_SUITE_JSON[name]
    suite = json.loads((d / "suite.json").read_text())
    (d / "suite.json").write_text(change if isinstance(change, str) else json.dumps(change(suite)))
    argv = {"report": ["report", str(d)], "merge": ["merge", str(tmp_path / "m"), str(d)],
            "reproduce": ["reproduce", str(d), "--quiet"],
            "resume": ["run", str(tmp_path / "suite.toml"), "--out", str(d), "--quiet"]}[command]
    before = _tree(tmp_path)
    assert main(argv) == 2
    _one_line(capsys, *words)
    assert _tree(tmp_path) == before


# ---- hangs: FIFOs, devices and huge files are refused at once ---------------------------------------------------

def _bench(args, cwd, timeout=60, env=None):
    return subprocess.run([sys.executable, "-m", "gradbench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.parametrize("argv, words", [
    (["compare", "fifo", "fifo"], ["fifo: is a FIFO"]),
    (["export", "fifo", "--format", "tidy"], ["fifo: is a FIFO"]),
    (["reproduce", "fifo"], ["fifo: is a FIFO"]),
    (["report", "fifodir"], ["fifodir/results.jsonl: is a FIFO"]),
    (["merge", "m", "fifodir"], ["fifodir/results.jsonl: is a FIFO"]),
    (["run", "fifo"], ["fifo", "is a FIFO"]),
    (["run", "/dev/zero"], ["/dev/zero", "is a device"]),
    (["compare", "/dev/zero", "/dev/zero"], ["/dev/zero: is a device"]),
    (["run", "huge.toml"], ["huge.toml", "larger than", "16 MiB"]),
    (["compare", "huge.jsonl", "huge.jsonl"], ["huge.jsonl", "larger than", "4 GiB"]),
])
def test_special_and_huge_files_are_refused_without_hanging(done, tmp_path, argv, words):
    os.mkfifo(tmp_path / "fifo")
    shutil.copytree(done, tmp_path / "fifodir")
    (tmp_path / "fifodir" / "results.jsonl").unlink()
    os.mkfifo(tmp_path / "fifodir" / "results.jsonl")
    with open(tmp_path / "huge.toml", "wb") as f:
        f.truncate(17 * 2**20)  # sparse: no disk used
    with open(tmp_path / "huge.jsonl", "wb") as f:
        f.truncate(5 * 2**30)
    proc = _bench(argv, tmp_path)  # a hang would end in subprocess.TimeoutExpired
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "runs").exists()


# ---- oversized work: refused before anything is allocated ----------------------------------------------------------

def test_every_task_declares_the_bytes_its_data_takes(monkeypatch):
    import dataclasses

    import jax
    import numpy as np

    from gradbench.tasks import TASKS

    for name, module in TASKS.items():
        if name == "cifar10":  # its data is files; bounded by their 60,000 images
            assert module.data_bytes(module.Config()) >= 60_000 * 3072 * 4
            continue
        default = module.Config()
        grown = {f.name: getattr(default, f.name) * 3 for f in dataclasses.fields(default)
                 if f.name in ("n_train", "n_heldout", "n_validation", "length")}
        for config in (default, dataclasses.replace(default, **grown)):
            made = sum(np.asarray(x).nbytes for x in jax.tree.leaves(module.make(config).data))
            declared = module.data_bytes(config)
            assert made <= declared <= 16 * made + 2**20, (name, config, made, declared)


def _fake_memory(monkeypatch, gib=8):
    from gradbench.spec import build

    monkeypatch.setattr(build, "available_memory", lambda: (gib * 2**30, "test memory"))


def test_a_task_too_large_to_make_is_refused_before_it_is_made(tmp_path, monkeypatch, capsys):
    import gradbench.tasks.teacher_student as ts

    _fake_memory(monkeypatch)
    made = []
    monkeypatch.setattr(ts, "make", lambda config: made.append(config))
    path = tmp_path / "big.toml"
    path.write_text(TINY4.replace("n_train = 64", "n_train = 2000000000"))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    _one_line(capsys, str(path), "task.n_train", "n_train=2000000000", "GiB", "test memory", "allowed")
    assert made == [] and not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [
    ["run", "{suite}", "--out", "{tmp}/o", "--quiet"],
    ["probe", "--model", "mlp", "--set", "width=1048576"],
    ["probe", "--model", "mlp", "--set", "width=2048", "--seeds", "10000"],
])
def test_a_model_too_large_is_refused_before_it_is_built(tmp_path, monkeypatch, capsys, argv):
    _fake_memory(monkeypatch)  # a 4 TiB model allocated here would abort the test process
    path = tmp_path / "big.toml"
    path.write_text(TINY4.replace("width = 8", "width = 1048576"))
    assert main([a.format(suite=path, tmp=tmp_path) for a in argv]) == 2
    err = _one_line(capsys, "GiB", "test memory", "allowed")
    assert ("model.width" in err) if "10000" not in argv else ("--seeds" in err and "10000 run(s)" in err)
    assert not (tmp_path / "o").exists()


def test_an_oversized_model_under_an_address_space_limit_is_one_line_not_an_abort(tmp_path):
    import resource

    path = tmp_path / "big.toml"
    path.write_text(TINY4.replace("width = 8", "width = 1048576"))
    limit = 16 * 2**30

    proc = subprocess.run([sys.executable, "-m", "gradbench", "run", str(path), "--out", "o", "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "model.width" in proc.stderr and "RLIMIT_AS" in proc.stderr
    assert not (tmp_path / "o").exists()


# ---- silent wrong results: refused instead -------------------------------------------------------------------------

def test_runs_with_other_seeds_never_mix_in_one_out(done, tmp_path, capsys):
    d = _copy(done, tmp_path)
    (tmp_path / "suite.toml").write_text(TINY4)
    before = _tree(d)
    assert main(["run", str(tmp_path / "suite.toml"), "--seeds", "3", "--out", str(d), "--quiet"]) == 2
    _one_line(capsys, "seeds=2", "seeds=3", "--force")
    assert _tree(d) == before
    assert main(["run", str(tmp_path / "suite.toml"), "--seeds", "3", "--out", str(d), "--quiet", "--force"]) == 0
    records = store.read_results(d)
    assert [r["config"]["seeds"] for r in records] == [3, 3]
    assert json.loads((d / "suite.json").read_text())["settings"]["seeds"] == 3
    assert main(["report", str(d)]) == 0


def test_out_empty_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suite.toml").write_text(TINY4)
    assert main(["run", "suite.toml", "--out", "", "--quiet"]) == 2
    _one_line(capsys, "--out ''", "empty path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.toml"]  # no runs/tiny


# ---- stale resume: records of other code or library versions are never reused (issue 33, item 3) -----------------

@pytest.mark.parametrize("key, value, words", [
    ("env.versions.jax", "0.0.1", ["jax 0.0.1 ->"]),
    ("env.versions.optax", "0.0.2", ["optax 0.0.2 ->"]),
    ("env.code_sha256", "0" * 64, ["code hash 000000000000 ->"]),
    ("env.python", "3.0.0", ["python 3.0.0 ->"]),
])
def test_records_of_other_code_or_versions_are_not_resumed(done, tmp_path, capsys, key, value, words):
    d = _copy(done, tmp_path)
    (tmp_path / "suite.toml").write_text(TINY4)
    _rewrite(d, _set(key, value))
    before = _tree(d)
    argv = ["run", str(tmp_path / "suite.toml"), "--out", str(d), "--quiet", "--no-report"]
    assert main(argv) == 2
    _one_line(capsys, "results.jsonl", "1 of its 2 records", "other code or library versions", "--force", *words)
    assert _tree(d) == before
    kept = store.read_results(d)[1]
    assert main([*argv, "--force"]) == 0
    after = store.read_results(d)
    assert after[1] == kept  # the current record is reused as it was
    assert after[0]["env"]["timestamp"] >= kept["env"]["timestamp"]  # the stale one was trained again
    from gradbench.records.env import provenance, provenance_differences

    assert provenance_differences(after[0]["env"], provenance()) == []


# ---- valid input that failed ---------------------------------------------------------------------------------------

def test_long_and_multibyte_experiment_names_train_and_plot(tmp_path, capsys):
    names = ["x" * 250, "é" * 250, "Ωμέγα" * 50]
    extra = "".join(f'[[experiment]]\nname = "{n}"\nseeds = {2 + i}\n' for i, n in enumerate(names))
    path = tmp_path / "long.toml"
    path.write_text(TINY.format(seeds=2, steps=4, lr="0.05", extra=extra))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    plots = sorted(p.name for p in (tmp_path / "o" / "plots").iterdir())
    assert plots and all(len(p.encode()) <= 255 for p in plots)
    assert len({p.split("-failure")[0] for p in plots if "-failure" in p}) == 3  # one set of figures per name


def test_shards_named_by_absolute_and_relative_paths_merge(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    suite = TINY.format(seeds=2, steps=4, lr="0.05", extra='[[mitigation]]\nname = "none"\n[[mitigation]]\n'
                        'name = "clip_by_global_norm"\n')
    (tmp_path / "suite.toml").write_text(suite)
    assert main(["run", "suite.toml", "--out", "s0", "--shard", "0/2", "--quiet", "--no-report"]) == 0
    assert main(["run", str(tmp_path / "suite.toml"), "--out", str(tmp_path / "s1"), "--shard", "1/2",
                 "--quiet", "--no-report"]) == 0
    capsys.readouterr()
    assert main(["merge", "m", "s0", str(tmp_path / "s1")]) == 0
    assert len(store.read_results(tmp_path / "m")) == 2
    assert main(["merge", "m2", "s0", str(tmp_path / "s0")]) == 2  # one directory named twice, two ways
    _one_line(capsys, "given twice")


# ---- the environment: one line, not a traceback ---------------------------------------------------------------------

@pytest.mark.parametrize("env, words", [
    ({"JAX_PLATFORMS": "cuda"}, ["JAX_PLATFORMS='cuda'", "no jax backend", "allowed"]),
    ({"JAX_PLATFORMS": "bogus"}, ["JAX_PLATFORMS='bogus'", "no jax backend"]),
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2"}, ["SLURM_NTASKS=2", "jax.distributed could not start",
                                                   "JAX_COORDINATOR_ADDRESS"]),
])
@pytest.mark.parametrize("command", ["run", "probe"])
def test_an_environment_without_its_backend_or_coordinator_is_one_line(tmp_path, env, words, command):
    if command == "probe" and "SLURM_NTASKS" in env:
        return  # probe is one process
    (tmp_path / "suite.toml").write_text(TINY4)
    argv = ["run", "suite.toml", "--out", "o", "--quiet"] if command == "run" else ["probe", "--model", "mlp"]
    proc = _bench(argv, tmp_path, timeout=180, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


# ---- a fast CLI and one judgement per run (issue 31, items 5 and 6) ------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["--help"], ["run", "--help"], ["run", "missing.toml"], ["run", "/dev/zero"], ["run", "s.toml", "--out", ""],
    ["run", "s.toml", "--seeds", "0"], ["run", "s.toml", "--shard", "x"], ["report", "missing"],
    ["compare", "missing", "missing"], ["merge", "m", "missing"], ["export", "missing", "--format", "tidy"],
])
def test_help_and_bad_input_do_not_import_jax(tmp_path, argv):
    (tmp_path / "s.toml").write_text("not toml [")
    code = ("import sys\nfrom gradbench.cli import main\ntry:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    rc = e.code\nprint('jax' in sys.modules, rc)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.split()[-2:] == ["False", "0" if "--help" in argv else "2"], (proc.stdout[-500:], proc.stderr)


def test_a_run_judges_its_verdicts_once(tmp_path, monkeypatch, capsys):
    from gradbench.analysis import claims

    calls = []
    real = claims.verdicts
    monkeypatch.setattr(claims, "verdicts", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    extra = ('[[mitigation]]\nname = "none"\n[[mitigation]]\nname = "clip_by_global_norm"\n\n[[claim]]\nid = "1"\n'
             'title = "clipping"\nquestion = "q"\nrationale = "r"\nprimary = { experiment = "tiny", baseline = '
             '{ name = "none" }, variant = { name = "clip_by_global_norm" }, measure = "reach_range", '
             'expect = "better" }\n')
    path = tmp_path / "claim.toml"
    path.write_text(TINY.format(seeds=2, steps=4, lr="[0.05, 0.5]", extra=extra))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert len(calls) == 1
    out = capsys.readouterr().out
    report = (tmp_path / "o" / "REPORT.md").read_text()
    assert "clipping" in out and "clipping" in report


# ---- a full disk while writing figures -----------------------------------------------------------------------------

def test_a_full_disk_while_plotting_names_the_figure_and_keeps_the_report(done, tmp_path, monkeypatch, capsys):
    import matplotlib.figure

    d = _copy(done, tmp_path)
    before = (d / "REPORT.md").read_bytes()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")  # as matplotlib raises it: no file name

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    assert main(["report", str(d)]) == 2
    err = _one_line(capsys, str(d / "plots"), ".png", "No space left on device")
    assert (d / "REPORT.md").read_bytes() == before and not [p for p in d.iterdir() if p.name.startswith(".")], err
