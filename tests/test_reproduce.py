"""bench reproduce: an unchanged cell comes back identical; doctored records are within noise or different."""
import contextlib
import copy
import io
import json
import re

import pytest

from gradbench.cli import main
from gradbench.analysis import reproduce
from gradbench.records import store


@pytest.fixture(scope="module")
def rerun(tiny_run, module_tmp):
    """The recorded cells and their rerun through the CLI (records kept with --out), with its progress log."""
    recorded = store.read_results(tiny_run)
    out = module_tmp / "rerun"
    log = io.StringIO()
    with contextlib.redirect_stderr(log):  # not a terminal: one plain progress line per finished group
        status = main(["reproduce", str(tiny_run), "--cell", recorded[0]["cell_id"], "--cell", recorded[1]["cell_id"],
                       "--out", str(out)])
    return status, recorded, store.read_results(out), log.getvalue()


def test_unchanged_cells_reproduce_identically(rerun):
    status, recorded, new, _ = rerun
    assert status == 0 and [r["cell_id"] for r in new] == [r["cell_id"] for r in recorded]
    rows = reproduce.judge(recorded, new, throughput_threshold=0.0)
    verdicts = {(r["label"], r["metric"]): r["reproduced"] for r in rows if r["metric"] != "steps_per_s"}
    assert len(verdicts) == 8 and set(verdicts.values()) == {"identical"}  # 2 cells x 2 rates, 2 per-seed values
    assert [r["per_seed"] for r in new] == [r["per_seed"] for r in recorded]
    assert not any("versions" in d for r in rows for d in r["env_differences"])
    assert reproduce.summary_lines(rows)[-1].startswith("8 identical, 0 within noise, 0 different (cell-metrics)")
    assert reproduce.summary_lines(rows)[-1].endswith("Reproduced.")


def test_throughput_of_a_program_with_other_runs_is_not_comparable(rerun):
    _, recorded, new, _ = rerun
    alone = copy.deepcopy(new)
    for r in alone:
        r["throughput"]["runs_per_program"] = 16  # as when one cell of the two is rerun by itself
    rows = [r for r in reproduce.judge(recorded, alone, 0.8) if r["metric"] == "steps_per_s"]
    assert {r["reproduced"] for r in rows} == {"not comparable"} and "32 vs 16 runs" in rows[0]["test"]


def test_progress_off_a_terminal_is_one_plain_line_per_group(rerun):
    _, recorded, _, log = rerun
    converged = sum(r["converged"] for r in recorded)
    diverged = sum(sum(r["per_seed"]["diverged"]) for r in recorded)
    failed = sum(not t for r in recorded for t in r["per_seed"]["trained"])
    assert re.fullmatch(r"\[group 1/1\] tiny: none lr=0\.05; none lr=0\.5: 2 cells, 32 seeds, "
                        rf"diverged {diverged}, failed {failed}, converged {converged}; \d+ steps/s; [\d.]+ s; "
                        r"suite elapsed \d+:\d\d, ETA 0:00\n", log), log


def test_doctored_records_are_within_noise_or_different(rerun):
    _, recorded, new, _ = rerun
    recorded, new = recorded[:1], new[:1]
    nudged = copy.deepcopy(recorded)
    ps = nudged[0]["per_seed"]
    ps["final_heldout_loss"] = [None if v is None else v * (1 + 1e-6) for v in ps["final_heldout_loss"]]
    verdicts = {r["metric"]: r["reproduced"] for r in reproduce.judge(nudged, new, 0.0)}
    assert verdicts["final_heldout_loss"] == "within noise" and verdicts["divergence_rate"] == "identical"
    broken = copy.deepcopy(recorded)
    broken[0]["per_seed"]["diverged"][:8] = [True] * 8
    broken[0]["env"]["versions"]["jax"] = "0.0.1"
    rows = reproduce.judge(broken, new, 0.0)
    assert {r["metric"]: r["reproduced"] for r in rows}["divergence_rate"] == "different"
    assert "versions.jax: '0.0.1' -> " in "; ".join(rows[0]["env_differences"])


def test_reproduce_refuses_unknown_cells_and_edited_configs(tiny_run, tmp_path, capsys):
    assert main(["reproduce", str(tiny_run), "--cell", "0123456789abcdef"]) == 2
    assert "--cell 0123456789abcdef: no such cell_id" in capsys.readouterr().err
    recs = store.read_results(tiny_run)
    recs[0]["config"]["divergence_factor"] = 11.0  # an edit that keeps the record's shape
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["reproduce", str(edited), "--cell", recs[0]["cell_id"]]) == 2
    assert "does not hash to its cell_id" in capsys.readouterr().err
