"""bench reproduce: an unchanged cell comes back identical; doctored records are within noise or different."""
import contextlib
import copy
import io
import json
import re

import pytest

from bench import reproduce, store
from bench.__main__ import main


@pytest.fixture(scope="module")
def rerun(tiny_run, module_tmp):
    """The recorded stable cell (lr 0.05) and its rerun through the CLI (records kept with --out)."""
    recorded = [r for r in store.read_results(tiny_run) if r["config"]["optimizer"]["lr"] == 0.05]
    out = module_tmp / "rerun"
    log = io.StringIO()
    with contextlib.redirect_stderr(log):  # not a terminal: one plain progress line per finished group
        status = main(["reproduce", str(tiny_run), "--cell", recorded[0]["cell_id"], "--out", str(out)])
    return status, recorded, store.read_results(out), log.getvalue()


def test_an_unchanged_cell_reproduces_identically(rerun, capsys):
    status, recorded, new, log = rerun
    assert status == 0 and [r["cell_id"] for r in new] == [recorded[0]["cell_id"]]
    rows = reproduce.judge(recorded, new, throughput_threshold=0.0)
    verdicts = {r["metric"]: r["reproduced"] for r in rows}
    assert verdicts == {"divergence_rate": "identical", "steps_to_converge": "identical",
                        "final_heldout_loss": "identical", "steps_per_s": "not comparable"}
    assert new[0]["per_seed"] == recorded[0]["per_seed"]
    # One cell of a two-cell group runs in a program of half the runs: its steps/s is another program's.
    assert (recorded[0]["throughput"]["runs_per_program"], new[0]["throughput"]["runs_per_program"]) == (32, 16)
    assert not any("versions" in d for r in rows for d in r["env_differences"])


def test_progress_off_a_terminal_is_one_plain_line_per_group(rerun):
    _, recorded, _, log = rerun
    assert re.fullmatch(r"\[group 1/1\] tiny: none lr=0\.05: 1 cells, 16 seeds, diverged 0, "
                        rf"converged {recorded[0]['converged']}; \d+ steps/s; [\d.]+ s; "
                        r"suite elapsed \d+:\d\d, ETA 0:00\n", log), log


def test_doctored_records_are_within_noise_or_different(rerun):
    _, recorded, new, _ = rerun
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
    recs[0]["config"]["seeds"] = 3
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["reproduce", str(edited), "--cell", recs[0]["cell_id"]]) == 2
    assert "does not hash to its cell_id" in capsys.readouterr().err
