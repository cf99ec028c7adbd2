"""bench merge keeps the books: no duplicate cells, no mixed provenance unless allowed; report environments."""
import json
import shutil
from pathlib import Path

import pytest

from gradbench.cli import main
from gradbench.records import store
from gradbench.reports import report


def split(run_dir, tmp_path, edit=None):
    """The run's two cells as two shard directories; `edit` changes the second shard's records."""
    recs = store.read_results(run_dir)
    dirs = []
    for i, rec in enumerate(recs):
        d = tmp_path / f"d{i}"
        d.mkdir()
        shutil.copy(run_dir / "suite.json", d / "suite.json")
        if edit and i == 1:
            edit(rec)
        (d / "results.jsonl").write_text(json.dumps(rec) + "\n")
        dirs.append(str(d))
    return dirs


def test_merge_refuses_duplicate_cells(tiny_run, tmp_path, capsys):
    d0, d1 = split(tiny_run, tmp_path)
    out = tmp_path / "m"
    assert main(["merge", str(out), d0, d0, d1]) == 2
    assert "given twice" in capsys.readouterr().err
    shutil.copytree(d0, tmp_path / "copy")
    assert main(["merge", str(out), d0, str(tmp_path / "copy"), d1]) == 2
    err = capsys.readouterr().err
    assert "is in both" in err and "none lr=0.05" in err and err.count("\n") == 1
    assert not out.exists()
    assert main(["merge", str(out), d0, d1]) == 0
    assert len(store.read_results(out)) == 2
    assert main(["merge", str(out), d0, d1]) == 2  # never into a directory that already holds results
    assert "already holds" in capsys.readouterr().err


def test_merge_refuses_mixed_commits_unless_allowed_and_the_report_lists_both(tiny_run, tmp_path, capsys):
    def other_commit(rec):
        rec["env"]["git_commit"] = "f" * 40

    d0, d1 = split(tiny_run, tmp_path, other_commit)
    out = tmp_path / "m"
    assert main(["merge", str(out), d0, d1]) == 2
    err = capsys.readouterr().err
    assert "git_commit" in err and "'ffffffff" in err and "--allow-mixed" in err and not out.exists()
    assert main(["merge", str(out), d0, d1, "--allow-mixed"]) == 0
    text, _ = report.render(out, out / "REPORT.md")
    assert "- E1 (1 records): " in text and "- E2 (1 records): " in text and "commit ffffffffff" in text
    marked = [line for line in text.splitlines() if line.startswith("| none lr=")]
    assert len(marked) == 2 and sum("[E2]" in line for line in marked) == 1


def test_merge_refuses_other_package_versions(tiny_run, tmp_path, capsys):
    d0, d1 = split(tiny_run, tmp_path, lambda rec: rec["env"].update(package_version="9.9.9"))
    assert main(["merge", str(tmp_path / "m"), d0, d1]) == 2
    assert "package_version" in capsys.readouterr().err


def test_unknown_or_older_schema_versions_are_refused_by_merge_and_report(tiny_run, tmp_path, capsys):
    d0, d1 = split(tiny_run, tmp_path, lambda rec: rec.update(schema_version=7))
    assert main(["merge", str(tmp_path / "m"), d0, d1]) == 2
    assert "schema_version 7 is unknown: upgrade gradbench" in capsys.readouterr().err
    assert main(["report", d1]) == 2
    err = capsys.readouterr().err
    assert "schema_version 7 is unknown" in err and err.count("\n") == 1
    assert not (Path(d1) / "REPORT.md").exists()
    old = tmp_path / "old"
    shutil.copytree(d0, old)
    (old / "results.jsonl").write_text(json.dumps({**store.read_results(d0)[0], "schema_version": 1}) + "\n")
    assert main(["report", str(old)]) == 2
    assert "written by an older gradbench: rerun the suite" in capsys.readouterr().err


def test_reproduce_line_leaves_out_seeds_and_steps_that_experiments_set_themselves(tmp_path):
    suite = {"path": "s.toml", "settings": {"seeds": 16, "steps": 200},
             "experiments": [{"name": "a", "seeds": 16, "steps": 2000}, {"name": "b", "seeds": 16, "steps": 200}]}
    # --steps 200 would retrain "a" for 200 steps; --seeds 16 is what every experiment ran with.
    assert report.reproduce_command(suite, tmp_path, tmp_path / "R.md") == "gradbench run s.toml --seeds 16 --out ."


@pytest.mark.parametrize("output", ["REPORT.md", "docs/deep/REPORT.md"])
def test_reproduce_line_is_exact_with_paths_relative_to_the_report(tmp_path, output):
    results = tmp_path / "runs" / "x"
    suite_file = tmp_path / "suites" / "s.toml"
    suite_file.parent.mkdir()
    suite_file.write_text("")
    suite = {"path": "suites/s.toml", "suite_from_out": store.suite_from(results, suite_file),
             "settings": {"seeds": 3, "steps": 40}}
    command = report.reproduce_command(suite, results, tmp_path / output)
    _, _, suite_arg, seeds, n_seeds, steps, n_steps, out_flag, out_arg = command.split()
    base = (tmp_path / output).parent
    assert (base / suite_arg).resolve() == suite_file.resolve()
    assert (base / out_arg).resolve() == results.resolve()
    assert (seeds, n_seeds, steps, n_steps, out_flag) == ("--seeds", "3", "--steps", "40", "--out")
