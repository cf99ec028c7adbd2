"""`bench peers`: skipped in one line without PyTorch; with it, the PyTorch side is the suite's model and optimiser."""
import numpy as np
import pytest

from bench import optim, peers, suite
from bench.__main__ import main


def test_without_torch_peers_is_one_line_and_exit_0(monkeypatch, capsys):
    monkeypatch.setattr(peers, "torch_available", lambda: False)
    assert main(["peers"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "PyTorch is not installed" in out


def test_torch_model_and_optimiser_match_the_suite_step_for_step(tmp_path):
    torch = pytest.importorskip("torch")
    import jax
    import optax
    from flax import nnx

    from bench.build import make_model, make_task

    path = tmp_path / "case.toml"
    path.write_text(peers.MLP_CASE.format(seeds=1, steps=10, chunk=5, batch=8, depth=3, width=8))
    (cell,) = suite.load(str(path)).cells
    plan = cell.plan
    task = make_task(plan["task"])
    model = make_model(plan["model"], task, jax.random.key(0))
    x, y = (np.array(a[:8]) for a in task.data["train"])
    net = peers.torch_mlp(plan["model"], x.shape[1], y.shape[1], torch.Generator().manual_seed(0))
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
