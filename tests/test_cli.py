"""The command line: bad input exits 2 naming file and key and writes nothing; list; run."""
import json

import pytest

from gradbench.cli import main
from tests.conftest import TINY, tiny_suite

GOOD = dict(seeds=2, steps=20, lr="0.05", extra="# mitigations")


def edit(text, old, new):
    assert old in text, old
    return text.replace(old, new, 1)


BAD = [  # (edit of the tiny suite, words the message must contain)
    (("depth = 2", "detph = 2"), ["model.detph", "did you mean 'depth'"]),
    (("activation = \"tanh\"", "activation = \"tanhh\""), ["model.activation", "'tanhh'", "did you mean 'tanh'"]),
    (("family = \"mlp\"", "family = \"mpl\""), ["model.family", "mlp"]),
    (("name = \"teacher_student\"", "name = \"teacher\""), ["task.name", "teacher_student"]),
    (("name = \"sgd\"", "name = \"sdg\""), ["optimizer.name", "did you mean 'sgd'"]),
    (("seeds = 2", "seeds = \"2\""), ["suite.seeds", "expected an integer"]),
    (("depth = 2", "depth = 0"), ["model", "depth, width and base_width must be >= 1"]),
    (("lr = 0.05", "lr = -1.0"), ["optimizer.lr", "> 0"]),
    (("lr = 0.05", "lr = []"), ["optimizer.lr", "empty list"]),
    (("lr = 0.05", "lr = 0.05\nmomentum = 0.9"), ["optimizer.momentum", "unknown key"]),
    (("name = \"tiny\"", "title = \"tiny\""), ["suite.title", "unknown key"]),
    (("[suite]", "[suite]\nwat = 1\n[suitee]"), ["suitee"]),
    (("chunk_steps = 20", "chunk_steps = 20\ndivergence_factor = 0.5"), ["suite", "divergence_factor"]),
    (("# mitigations", "[[mitigation]]\nname = \"clip_by_globalnorm\""), ["mitigation[0].name",
                                                                     "did you mean 'clip_by_global_norm'"]),
    (("# mitigations", "[[mitigation]]\nname = \"clip_by_global_norm\"\nmax_norm = -1"), ["mitigation[0].max_norm"]),
    (("# mitigations", "[[mitigation]]\nname = \"activation\""), ["mitigation[0].activation", "required"]),
    (("# mitigations", "[[mitigation]]\nname = \"activation\"\nactivation = \"swish\""),
     ["mitigation[0] (activation).activation", "'swish'"]),
    (("# mitigations", "[[mitigation]]\nname = \"init\"\ninit = \"identity\""), ["mitigation[0]", "'identity'"]),
    (("[model]", "[model]\nfamily = 3\n[x]"), ["top level"]),
    (("[task]", "task = [1,"), ["not valid TOML"]),
]


@pytest.mark.parametrize("change, words", BAD, ids=[w[0] for _, w in BAD])
def test_bad_suite_exits_2_naming_file_and_key_and_writes_nothing(tmp_path, capsys, change, words):
    text = edit(TINY.format(**GOOD), *change)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err
    for word in words:
        assert word in err
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["--shard", "3/2"], ["--shard", "0 <= i < n"]),
    (["--shard", "x"], ["--shard", "i/n"]),
])
def test_bad_options_exit_2(tmp_path, capsys, args, words):
    path = tiny_suite(tmp_path, **{k: v for k, v in GOOD.items()})
    assert main(["run", str(path), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and not (tmp_path / "o").exists()


def test_missing_suite_file_exits_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_list_names_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("teacher_student", "clusters", "mlp", "xavier", "leaky_relu", "adagrad", "clip_by_global_norm",
                 "skip_nonfinite", "adaptive_grad_clip"):
        assert word in out


def test_run_prints_a_summary_and_shards_split_the_cells(tmp_path, capsys):
    # Two compiled groups (one per mitigation) of 2 learning rates: each shard runs one whole group.
    path = tiny_suite(tmp_path, seeds=2, steps=20, lr="[0.05, 1e4]", extra='[[mitigation]]\nname = "none"\n'
                      '[[mitigation]]\nname = "clip_by_global_norm"\nmax_norm = 1.0')
    for shard in ("0/2", "1/2"):
        assert main(["run", str(path), "--out", str(tmp_path / shard[0]), "--shard", shard, "--quiet", "--cells"]) == 0
    out = capsys.readouterr().out
    assert "none" in out and "steps/s" in out
    cells = [[(r["config"]["mitigation"]["name"], r["config"]["optimizer"]["lr"])
              for r in map(json.loads, (tmp_path / d / "results.jsonl").open())] for d in "01"]
    assert cells == [[("none", 0.05), ("none", 1e4)], [("clip_by_global_norm", 0.05), ("clip_by_global_norm", 1e4)]]
    assert main(["merge", str(tmp_path / "all"), str(tmp_path / "0"), str(tmp_path / "1")]) == 0
    merged = [json.loads(line)["config"]["optimizer"]["lr"] for line in (tmp_path / "all" / "results.jsonl").open()]
    assert sorted(merged) == [0.05, 0.05, 1e4, 1e4]
    assert main(["report", str(tmp_path / "all")]) == 0 and (tmp_path / "all" / "REPORT.md").exists()


def test_merge_refuses_other_suites_and_empty_directories(tmp_path, capsys):
    for name, lr in (("a", "0.05"), ("b", "0.1")):
        path = tiny_suite(tmp_path, name=f"{name}.toml", seeds=1, steps=5, lr=lr)
        assert main(["run", str(path), "--out", str(tmp_path / name), "--quiet", "--no-report"]) == 0
    assert main(["merge", str(tmp_path / "m"), str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "not shards of one suite" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "m"), str(tmp_path / "nothing")]) == 2
    assert not (tmp_path / "m").exists()
