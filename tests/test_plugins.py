"""Plugins (`[suite] plugins`): a module registering a transform and a model family runs with no driver script,
joins the code hash and its cells' identity, is imported again by reproduce, and refuses bad input on one line;
a transform's static int parameter compiles per value while its traced float does not."""
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny_suite

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "custom_mitigation"


def bench(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "gradbench", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=900)


def records(directory) -> list[dict]:
    return [json.loads(line) for line in (Path(directory) / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """The example suite run as a user runs it: `gradbench run SUITE --out DIR`, no driver script."""
    out = tmp_path_factory.mktemp("custom") / "run"
    done = bench("run", str(EXAMPLE / "suite.toml"), "--out", str(out), "--seeds", "2", "--steps", "100", "--quiet")
    assert done.returncode == 0, done.stderr
    return out


def test_the_example_runs_with_no_driver_and_its_entries_are_in_the_records_and_report(example_run):
    from gradbench.records.env import code_hash

    recs = records(example_run)
    by_label = {(r["experiment"], r["label"]): r for r in recs}
    assert len(recs) == 6 * 3 + 2 * 3  # clipping: 6 arms x 3 lrs; families: 2 families x 3 lrs
    ema = [r for r in recs if r["config"]["mitigation"]["name"] == "ema_clip"]
    assert sorted({r["config"]["mitigation"]["multiple"] for r in ema}) == [1.5, 3.0]
    assert sorted({r["config"]["mitigation"]["window"] for r in ema}) == [1, 5]
    assert all(r["plan"]["transforms"] == [{"name": "ema_clip", "multiple": r["config"]["mitigation"]["multiple"],
                                            "window": r["config"]["mitigation"]["window"]}] for r in ema)
    # Both multiples (traced) train in one compiled program per window (static): 2 multiples x 3 lrs x 2 seeds.
    assert {r["throughput"]["runs_per_program"] for r in ema} == {12}
    # Each family is its own compiled program (3 lrs x 2 seeds), and a cell of each.
    families = [r for r in recs if r["experiment"] == "families"]
    assert sorted(r["config"]["model"]["family"] for r in families) == ["mlp"] * 3 + ["resmlp"] * 3
    assert {r["throughput"]["runs_per_program"] for r in families} == {6}
    assert "branch_scale" in by_label[("families", "none family=resmlp lr=1.0")]["config"]["model"]
    # Every cell trained: one outcome per seed, finite losses where it did not diverge.
    for r in recs:
        assert len(r["per_seed"]["diverged"]) == 2
        assert all(d or np.isfinite(loss) for d, loss in zip(r["per_seed"]["diverged"],
                                                              r["per_seed"]["final_train_loss"]))
    # At lr 0.3 every unclipped seed diverges; the plugin's clip at multiple 1.5 from step 1 keeps seed 0
    # training, and a window of 5 (no clip in the steps where these runs explode) keeps none.
    assert by_label[("clipping", "none lr=0.3")]["per_seed"]["diverged"] == [True, True]
    assert by_label[("clipping", "ema_clip(multiple=1.5,window=1) lr=0.3")]["per_seed"]["diverged"][0] is False
    assert by_label[("clipping", "ema_clip(multiple=1.5,window=5) lr=0.3")]["per_seed"]["diverged"] == [True, True]
    small = by_label[("clipping", "ema_clip(multiple=1.5,window=1) lr=0.03")]
    assert small["per_seed"]["diverged"] == [False, False]
    assert all(loss < l0 for loss, l0 in zip(small["per_seed"]["final_train_loss"], small["per_seed"]["loss_0"]))
    # The plugin's cells carry its source hash (their identity); built-in cells do not.
    suite_json = json.loads((example_run / "suite.json").read_text())
    (plugin,) = suite_json["plugins"]
    assert plugin["name"] == "custom_ext" and plugin["module"] == "custom_ext.py"
    assert plugin["sha256"] == __import__("hashlib").sha256(
        b"custom_ext.py\0" + (EXAMPLE / "custom_ext.py").read_bytes() + b"\0").hexdigest()
    uses = {(r["config"]["mitigation"]["name"], r["config"]["model"]["family"]) for r in recs if "plugins" in r["config"]}
    assert uses == {("ema_clip", "mlp"), ("none", "resmlp")}
    assert all(r["config"]["plugins"] == {"custom_ext": plugin["sha256"]} for r in recs if "plugins" in r["config"])
    # The run's code hash joins the plugin's source: it is not the repository's alone.
    assert {r["env"]["code_sha256"] for r in recs} != {code_hash(ROOT)}
    assert len({r["env"]["code_sha256"] for r in recs}) == 1
    report = (example_run / "REPORT.md").read_text()
    assert "ema_clip(multiple=1.5,window=1)" in report and "family=resmlp" in report
    assert "Plugins" in report and "custom_ext.py" in report
    assert "resmlp vs mlp, depth 12" in report  # the claim's secondary question selects each family's arm


def test_builtin_cells_of_a_plugin_suite_keep_their_ids(tmp_path):
    from gradbench.spec import suite

    text = (EXAMPLE / "suite.toml").read_text()
    with_plugin = suite.load(EXAMPLE / "suite.toml")
    plain = tmp_path / "plain.toml"
    # the same suite without the plugin's entries (and without the plugin) gives the same ids to the same cells
    plain.write_text(text.replace('plugins = ["custom_ext.py"]', "")
                     .replace('  { name = "ema_clip", multiple = [1.5, 3.0], window = [1, 5] },\n', "")
                     .replace('["mlp", "resmlp"]', '"mlp"').split("[[claim]]")[0])
    without = {(c.experiment, c.label): c.cell_id for c in suite.load(plain).cells}
    builtin = [c for c in with_plugin.cells if "plugins" not in c.config]
    assert len(builtin) == 9
    for c in builtin:
        label = c.label.replace(" family=mlp", "")
        assert without[(c.experiment, label)] == c.cell_id


def test_a_family_grid_refuses_a_key_one_family_lacks(tmp_path):
    from gradbench.spec import suite
    from gradbench.spec.schema import SuiteError

    path = tmp_path / "suite.toml"
    text = (EXAMPLE / "suite.toml").read_text().replace('"custom_ext.py"', f'"{EXAMPLE / "custom_ext.py"}"')
    path.write_text(text.replace('init = "normal" }', 'init = "normal", norm = "layer" }'))
    with pytest.raises(SuiteError, match=r"model\.norm: not a key of family 'resmlp' \(model\.family is a list"):
        suite.load(path)


def test_report_reproduce_and_compare_work_on_plugin_results(example_run, tmp_path):
    assert bench("report", str(example_run), "--output", str(tmp_path / "R.md")).returncode == 0
    assert "ema_clip" in (tmp_path / "R.md").read_text()
    ema = next(r for r in records(example_run) if r["label"] == "ema_clip(multiple=1.5,window=1) lr=0.3")
    resmlp = next(r for r in records(example_run) if r["label"] == "none family=resmlp lr=1.0")
    again = tmp_path / "again"
    done = bench("reproduce", str(example_run), "--cell", ema["cell_id"], "--cell", resmlp["cell_id"],
                 "--out", str(again), "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    rerun = {r["cell_id"]: r for r in records(again)}
    for old in (ema, resmlp):  # the plugin was imported again: the same numbers, seed for seed
        assert rerun[old["cell_id"]]["per_seed"]["final_train_loss"] == old["per_seed"]["final_train_loss"]
        assert rerun[old["cell_id"]]["per_seed"]["diverged"] == old["per_seed"]["diverged"]
        assert rerun[old["cell_id"]]["env"]["code_sha256"] == old["env"]["code_sha256"]
    compared = bench("compare", str(example_run), str(again), "--throughput-threshold", "0")
    assert compared.returncode == 0, compared.stdout + compared.stderr


def _small_suite(directory: Path, plugin: str) -> Path:
    """The tiny suite at one learning rate, with the plugin and its mitigation beside no mitigation."""
    return tiny_suite(directory, seeds=2, steps=40, lr="0.5", suite_extra=f'plugins = ["{plugin}"]', extra="""
[[mitigation]]
name = "none"

[[mitigation]]
name = "ema_clip"
multiple = 1.5
window = 3
""")


def test_editing_the_plugin_changes_the_code_hash_and_its_cell_is_rerun_not_reused(tmp_path):
    shutil.copy(EXAMPLE / "custom_ext.py", tmp_path / "custom_ext.py")
    suite = _small_suite(tmp_path, "custom_ext.py")
    out = tmp_path / "run"
    assert bench("run", str(suite), "--out", str(out), "--quiet", "--no-report").returncode == 0
    before = {r["config"]["mitigation"]["name"]: r for r in records(out)}
    # Resuming with the plugin unchanged trains nothing: every record is reused as it was.
    assert bench("run", str(suite), "--out", str(out), "--quiet", "--no-report").returncode == 0
    assert records(out) == list(before.values())
    # Edit the plugin's transform: clip to half the limit it used to.
    source = (tmp_path / "custom_ext.py").read_text()
    edited = source.replace("limit = multiple * state.ema / debias", "limit = 0.5 * multiple * state.ema / debias")
    assert edited != source
    (tmp_path / "custom_ext.py").write_text(edited)
    refused = bench("run", str(suite), "--out", str(out), "--quiet", "--no-report")
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "another version of plugin 'custom_ext'" in refused.stderr and "--force" in refused.stderr
    assert records(out) == list(before.values())  # nothing written
    assert bench("run", str(suite), "--out", str(out), "--quiet", "--no-report", "--force").returncode == 0
    after = {r["config"]["mitigation"]["name"]: r for r in records(out)}
    old, new = before["ema_clip"], after["ema_clip"]
    assert new["cell_id"] != old["cell_id"]  # the plugin's source is part of the cell's identity
    assert new["config"]["plugins"]["custom_ext"] != old["config"]["plugins"]["custom_ext"]
    assert new["env"]["code_sha256"] != old["env"]["code_sha256"]
    assert new["env"]["timestamp"] >= old["env"]["timestamp"]
    assert after["none"]["cell_id"] == before["none"]["cell_id"]  # a built-in cell keeps its id
    assert len(after) == 2 and len(records(out)) == 2  # the old version's record is gone, not kept beside
    # The halved limit clips harder from step `window` on: the trained losses differ from the old plugin's.
    assert new["per_seed"]["final_train_loss"] != old["per_seed"]["final_train_loss"]
    assert after["none"]["per_seed"]["final_train_loss"] == before["none"]["per_seed"]["final_train_loss"]
    # Reading the results back imports the plugin again: one that is gone is one line naming suite.json.
    (tmp_path / "custom_ext.py").unlink()
    gone = bench("reproduce", str(out), "--quiet")
    assert gone.returncode == 2 and len(gone.stderr.strip().splitlines()) == 1, gone.stderr
    assert f"{out / 'suite.json'}: suite.plugins: 'custom_ext.py': no such file" in gone.stderr


@pytest.mark.parametrize("plugin, words", [
    ("missing_plugin.py", ["suite.plugins", "'missing_plugin.py': no such file"]),
    ("no_such_module_for_gradbench", ["suite.plugins", "no such module"]),
    ("broken_plugin.py", ["suite.plugins", "broken_plugin.py line 2", "ZeroDivisionError"]),
    ("clashing_plugin.py", ["suite.plugins", "transform 'clip_by_value' is already registered (built in)"]),
])
def test_a_plugin_that_cannot_be_imported_is_one_line_exit_2_nothing_written(tmp_path, capsys, plugin, words):
    from gradbench.cli import main
    from gradbench.spec import optim

    (tmp_path / "broken_plugin.py").write_text("import math\nx = 1 / 0\n")
    (tmp_path / "clashing_plugin.py").write_text(
        "from gradbench.spec import register\nfrom gradbench.spec.register import Key\n"
        "register.mitigation('clashing_ok', 'registered first, then undone', {}, lambda plan, p: None)\n"
        "register.transform('clip_by_value', lambda: None, 'taken', {})\n")
    suite = _small_suite(tmp_path, plugin)
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {suite}: suite.plugins: ")
    for w in words:
        assert w in err
    assert not out.exists()
    assert "clashing_ok" not in optim.MITIGATIONS  # a failed plugin registers nothing


STATIC_PLUGIN = """
import jax
import jax.numpy as jnp
import optax
from gradbench.spec import register
from gradbench.spec.register import Key


def factory(multiple, window):
    decay = 1.0 - 1.0 / window

    def init(params):
        return (jnp.zeros([], jnp.float32), jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        ema, count = state
        norm = optax.tree.norm(updates)
        limit = multiple * ema / (1.0 - decay ** jnp.maximum(count, 1).astype(jnp.float32))
        clip = (count >= window) & (norm > limit)
        scale = jnp.where(clip, limit / jnp.where(clip, norm, 1.0), 1.0)
        seen = jnp.where(clip, limit, norm)
        return jax.tree.map(lambda g: g * scale, updates), (decay * ema + (1.0 - decay) * seen, count + 1)

    return optax.GradientTransformation(init, update)


register.transform("NAME", factory, "ema clip for a test",
                   {"multiple": Key(float, 2.0, gt=0, traced=True), "window": Key(int, 3, ge=1)})
"""


def test_a_static_int_transform_parameter_compiles_per_value_and_is_used_as_given(tmp_path):
    import jax.numpy as jnp

    from gradbench.engine import runner
    from gradbench.spec import optim, suite as suite_lib
    from gradbench.spec.schema import SuiteError

    name = f"static_ext_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(STATIC_PLUGIN.replace("NAME", name))
    path = _small_suite(tmp_path, f"{name}.py")
    text = path.read_text().replace('name = "ema_clip"\nmultiple = 1.5\nwindow = 3',
                                    f'name = "{name}"\nmultiple = [1.5, 3.0]\nwindow = [2, 4]')
    path.write_text(text)
    loaded = suite_lib.load(path)
    cells = [c for c in loaded.cells if c.config["mitigation"]["name"] == name]
    assert len(cells) == 4 and all(c.config["plugins"] == {name: loaded.plugins[0].sha256} for c in cells)
    groups = [g for g in runner.group_cells(loaded.cells) if g.plan["transforms"]]
    # window is static: one program per value; multiple is traced: both values share it.
    assert sorted(g.plan["transforms"][0]["window"] for g in groups) == [2, 4]
    assert all(g.plan["transforms"][0]["multiple"] is None and len(g.cells) == 2 for g in groups)
    assert {k: v for k, v in optim.traced_values(cells[0].plan).items() if k.startswith("transforms")} == \
        {"transforms.0.multiple": 1.5}
    # The chain built from the static plan and the traced values: unchanged while gathering `window` steps,
    # then a spike clipped to multiple x the debiased EMA of the norms before.
    static, hyper = optim.static_plan(cells[0].plan), optim.traced_values(cells[0].plan)
    window, multiple = cells[0].plan["transforms"][0]["window"], hyper["transforms.0.multiple"]
    assert (window, multiple) == (2, 1.5)
    tx = optim.build(static, {**hyper, "lr": 1.0})
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    norms = [1.0, 2.0, 100.0]
    outs = []
    for n in norms:
        update, state = tx.update({"w": jnp.asarray([n, 0.0])}, state, params)
        outs.append(-float(update["w"][0]))  # sgd at lr 1: the update is -gradient
    decay = 1 - 1 / window
    ema = (1 - decay) * (decay * 1.0 + 2.0)
    limit = multiple * ema / (1 - decay**2)
    assert outs[:2] == [1.0, 2.0]
    assert outs[2] == pytest.approx(limit, rel=1e-6) and limit < 100.0
    # A static int parameter is an int: 2.5 is refused, naming the key.
    path.write_text(text.replace("window = [2, 4]", "window = 2.5"))
    with pytest.raises(SuiteError, match=r"mitigation\[1\]\.window: expected an integer"):
        suite_lib.load(path)
