"""`bench peers`: skipped in one line without PyTorch; with it, the PyTorch side is the suite's model and optimiser."""
import numpy as np
import pytest

from gradbench.cli import main
from gradbench.peers import cases
from gradbench.spec import optim, suite


def test_without_torch_peers_is_one_line_and_exit_3(monkeypatch, capsys):
    monkeypatch.setattr(cases, "torch_available", lambda: False)
    assert main(["peers"]) == 3  # skipped: distinct from 0 (compared) and 2 (bad input)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "PyTorch is not installed" in out


def test_torch_model_and_optimiser_match_the_suite_step_for_step(tmp_path):
    torch = pytest.importorskip("torch")
    import jax
    import optax
    from flax import nnx

    from gradbench.peers import pytorch
    from gradbench.spec.build import make_model, make_task

    path = tmp_path / "case.toml"
    path.write_text(cases.MLP_CASE.format(seeds=1, steps=10, chunk=5, batch=8, depth=3, width=8))
    (cell,) = suite.load(str(path)).cells
    plan = cell.plan
    task = make_task(plan["task"])
    model = make_model(plan["model"], task, jax.random.key(0))
    x, y = (np.array(a[:8]) for a in task.data["train"])
    net = pytorch.torch_mlp(plan["model"], x.shape[1:], y.shape[1], torch.Generator().manual_seed(0))
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    jax_linears = [*model.layers, model.readout]
    assert len(linears) == len(jax_linears) == 4
    with torch.no_grad():  # the suite's weights into the PyTorch model
        for t, j in zip(linears, jax_linears):
            t.weight.copy_(torch.from_numpy(np.asarray(j.kernel[...]).T.copy()))
            t.bias.copy_(torch.from_numpy(np.asarray(j.bias[...]).copy()))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optim.build(plan, optim.traced_values(plan))
    state = tx.init(params)
    opt = plan["optimizer"]
    adam = torch.optim.Adam(net.parameters(), lr=opt["lr"], betas=(opt["b1"], opt["b2"]), eps=opt["eps"])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(3):
        loss, grads = jax.value_and_grad(lambda p: task.loss(nnx.merge(graphdef, p)(x), y))(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        t_loss = torch.nn.functional.mse_loss(net(xt), yt)
        adam.zero_grad()
        t_loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), plan["transforms"][0]["max_norm"])
        adam.step()
        np.testing.assert_allclose(t_loss.item(), float(loss), rtol=1e-5)
    trained = nnx.merge(graphdef, params)
    for t, j in zip(linears, [*trained.layers, trained.readout]):
        np.testing.assert_allclose(t.weight.detach().numpy().T, np.asarray(j.kernel[...]), atol=1e-6)


TINY_CASES = {  # the two non-MLP peers at tiny shapes: both sides train through the same code as `bench peers`
    "rnn": cases.Case("tiny RNN", cases.RNN_CASE.format(seeds=2, steps=4, chunk=2, length=6, batch=4, hidden=8),
                      seeds=2, steps=4, chunk=2, strategies=("loop", "vmap")),
    "resnet": cases.Case("tiny ResNet", cases.RESNET_CASE.format(seeds=1, steps=4, chunk=2, batch=8, stages=2,
                                                                 width=2),
                         seeds=1, steps=4, chunk=2),
}


def _plan(tmp_path, case):
    path = tmp_path / "case.toml"
    path.write_text(case.toml)
    (cell,) = suite.load(str(path)).cells
    return cell.plan


@pytest.mark.parametrize("name", sorted(TINY_CASES))
def test_torch_model_has_the_suites_trainable_parameter_count(tmp_path, name):
    torch = pytest.importorskip("torch")
    import jax
    from flax import nnx

    from gradbench.peers import pytorch
    from gradbench.spec.build import make_model, make_task

    plan = _plan(tmp_path, TINY_CASES[name])
    model = make_model(plan["model"], make_task(plan["task"]), jax.random.key(0))
    n_suite = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    net = pytorch.torch_model(plan, torch.Generator().manual_seed(0))
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == n_suite > 0


def test_torch_rnn_computes_the_suites_function(tmp_path):
    torch = pytest.importorskip("torch")
    import jax

    from gradbench.peers import pytorch
    from gradbench.spec.build import make_model, make_task

    plan = _plan(tmp_path, TINY_CASES["rnn"])
    task = make_task(plan["task"])
    model = make_model(plan["model"], task, jax.random.key(1))
    net = pytorch.torch_model(plan, torch.Generator().manual_seed(0))
    (cell,) = model.cells
    as_torch = lambda a: torch.from_numpy(np.asarray(a).copy())  # noqa: E731
    with torch.no_grad():  # the suite's weights into the PyTorch model
        net.rnn.weight_ih_l0.copy_(as_torch(cell.input.kernel[...]).T)
        net.rnn.bias_ih_l0.copy_(as_torch(cell.input.bias[...]))
        net.rnn.weight_hh_l0.copy_(as_torch(cell.recurrent[...]).T)  # h @ W (suite) = h @ W_hh^T (PyTorch)
        net.readout.weight.copy_(as_torch(model.readout.kernel[...]).T)
        net.readout.bias.copy_(as_torch(model.readout.bias[...]))
        x = np.asarray(task.data["heldout"][0][:5])
        out = net(torch.from_numpy(x.copy())).numpy()
    np.testing.assert_allclose(out, np.asarray(model(x)), rtol=1e-4, atol=1e-5)
    assert not net.rnn.bias_hh_l0.requires_grad and float(net.rnn.bias_hh_l0.abs().sum()) == 0.0


def test_adding_batches_follow_the_task(tmp_path):
    torch = pytest.importorskip("torch")
    from gradbench.peers import pytorch

    plan = _plan(tmp_path, TINY_CASES["rnn"])
    sample = pytorch._adding_batches(None, plan["task"], None)
    x, y = sample(torch.Generator().manual_seed(0), seeds=3)
    assert x.shape == (3, 4, 6, 2) and y.shape == (3, 4, 1)
    markers = x[..., 1]
    assert torch.all(markers.sum(-1) == 2) and torch.all(markers[..., :3].sum(-1) == 1)
    torch.testing.assert_close(y[..., 0], (x[..., 0] * markers).sum(-1))


def test_both_sides_train_the_rnn_and_resnet_cases():
    pytest.importorskip("torch")
    rows = cases.compare(sorted(TINY_CASES), TINY_CASES)
    assert [row["case"] for row in rows] == ["resnet", "rnn"]
    for row in rows:
        assert row["suite"]["seed_steps_per_s"] > 0 and row["pytorch"]["seed_steps_per_s"] > 0
        assert np.isfinite(row["pytorch"]["final_batch_loss"])
        assert row["ratio"] == row["suite"]["seed_steps_per_s"] / row["pytorch"]["seed_steps_per_s"]
    rnn = rows[1]["pytorch"]
    assert {k.split(",")[0] for k in rnn["probed"]} == {"loop", "vmap"}
    assert min(rnn["probed"].values()) > 0
    assert f"{rnn['strategy']}, {rnn['threads']} threads" == max(rnn["probed"], key=rnn["probed"].get)
