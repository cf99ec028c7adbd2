"""The PyTorch side of `bench peers`: the suite's models, batches and training loops in PyTorch eager.

Imported only when PyTorch is installed. TORCH_MODELS builds each model family as the suite builds it
(the same layers and initial-weight variances), TORCH_TASKS draws batches as each task draws them, and
TRAINERS train many seeds one after another ("loop") or all at once under torch.func.vmap ("vmap").
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from gradbench.spec.build import make_task

def _init_weight(weight, var: float, generator, truncated: bool = True) -> None:
    """Fills `weight` like JAX's variance_scaling with variance `var`: a normal truncated at two standard
    deviations and widened to keep the variance (lecun_normal, he_normal), or a plain normal."""
    if truncated:
        std = var ** 0.5 / 0.87962566103423978  # JAX's correction for the truncation
        torch.nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std, generator=generator)
    else:
        weight.normal_(0.0, var ** 0.5, generator=generator)


def _require(model: dict, **expected) -> None:
    """Raises ValueError unless the model config has the values the PyTorch peer implements."""
    wrong = {k: model.get(k) for k, v in expected.items() if model.get(k) != v}
    if wrong:
        raise ValueError(f"the PyTorch peer of the {model['family']} family implements {expected} only, got {wrong}")


def torch_mlp(model: dict, input_shape: tuple, out_dim: int, generator):
    """The suite's MLP in PyTorch: Linear + activation per hidden layer, LeCun-normal weights, zero biases."""
    _require(model, init="lecun", bias_var=0.0)
    activations = {"tanh": nn.Tanh, "relu": nn.ReLU}
    widths = [int(np.prod(input_shape))] + [model["width"]] * model["depth"] + [out_dim]
    layers = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
        linear = nn.Linear(w_in, w_out)
        with torch.no_grad():
            _init_weight(linear.weight, 1.0 / w_in, generator)
            linear.bias.zero_()
        layers.append(linear)
        if i < model["depth"]:
            layers.append(activations[model["activation"]]())
    return nn.Sequential(*layers)


class ElmanRNN(nn.Module):
    """One nn.RNN(nonlinearity='tanh') layer and a Linear read-out of the last step's hidden state."""

    def __init__(self, in_features: int, hidden: int, out_dim: int):
        super().__init__()
        self.rnn = nn.RNN(in_features, hidden, nonlinearity="tanh", batch_first=True)
        self.readout = nn.Linear(hidden, out_dim)

    def forward(self, x_BxTxF):
        """(batch, out_dim) from (batch, time, features)."""
        h_BxTxH, _ = self.rnn(x_BxTxF)
        return self.readout(h_BxTxH[:, -1])


def torch_rnn(model: dict, input_shape: tuple, out_dim: int, generator):
    """The suite's Elman RNN in PyTorch (models/rnn.py with cell "tanh", one layer, a non-sequence task).

    The suite's cell has one bias (in its input projection): nn.RNN's second bias, bias_hh, stays zero and is
    frozen, so both models have the same function and the same trainable parameters. Initial weights as the
    suite's: W_x and the read-out LeCun normal (variance 1 / fan_in), W_h ~ N(0, recurrent_weight_var / hidden).
    """
    _require(model, cell="tanh", layers=1, activation="tanh", recurrent_init="normal", init="lecun", bias_var=0.0,
             dtype="float32")
    hidden = model["hidden"]
    net = ElmanRNN(input_shape[-1], hidden, out_dim)
    with torch.no_grad():
        _init_weight(net.rnn.weight_ih_l0, 1.0 / input_shape[-1], generator)
        _init_weight(net.rnn.weight_hh_l0, model["recurrent_weight_var"] / hidden, generator, truncated=False)
        _init_weight(net.readout.weight, 1.0 / hidden, generator)
        for bias in (net.rnn.bias_ih_l0, net.rnn.bias_hh_l0, net.readout.bias):
            bias.zero_()
    net.rnn.bias_hh_l0.requires_grad_(False)
    return net


# norm name -> channels -> module (Flax's BatchNorm momentum 0.9 is PyTorch's 0.1; both eps 1e-5)
NORMS = {"batch": lambda c: nn.BatchNorm2d(c, eps=1e-5, momentum=0.1), "none": lambda c: nn.Identity()}


class Block(nn.Module):
    """conv -> norm -> relu -> conv -> norm, plus the skip (a 1x1 conv where the shape changes), then relu."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, residual: bool):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1), NORMS[norm](c_out)
        self.conv2, self.norm2 = nn.Conv2d(c_out, c_out, 3, 1, padding=1), NORMS[norm](c_out)
        self.residual = residual
        needs_proj = residual and (stride != 1 or c_in != c_out)
        self.proj = nn.Conv2d(c_in, c_out, 1, stride) if needs_proj else None

    def forward(self, x):
        """The block's output (after its final relu)."""
        z = self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x)))))
        if self.residual:
            z = z + (self.proj(x) if self.proj is not None else x)
        return F.relu(z)


class ResNet(nn.Module):
    """A 3x3 conv stem, stages of blocks (stride 2 at the start of each stage after the first), pooling, read-out."""

    def __init__(self, model: dict, in_channels: int, out_dim: int):
        super().__init__()
        channels = [model["width"] * 2 ** s for s in range(model["stages"])]
        self.stem = nn.Conv2d(in_channels, channels[0], 3, 1, padding=1)
        self.stem_norm = NORMS[model["norm"]](channels[0])
        blocks, c_in = [], channels[0]
        for s, c_out in enumerate(channels):
            for b in range(model["blocks_per_stage"]):
                blocks.append(Block(c_in, c_out, 2 if s > 0 and b == 0 else 1, model["norm"], model["residual"]))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.readout = nn.Linear(c_in, out_dim)

    def forward(self, x_BxCxHxW):
        """Logits (batch, out_dim) from NCHW images."""
        h = self.blocks(F.relu(self.stem_norm(self.stem(x_BxCxHxW))))
        return self.readout(h.mean(dim=(2, 3)))


def torch_resnet(model: dict, input_shape: tuple, out_dim: int, generator):
    """The suite's small ResNet (models/resnet.py) in PyTorch, NCHW; He-normal weights, zero biases.

    What differs from the suite's: a stride-2 3x3 conv pads one pixel on every side here, where the suite's
    "SAME" padding pads one pixel at the bottom and right only (the same output shape, windows one pixel
    apart); BatchNorm's running variance (used only at evaluation) is the unbiased estimate here and the biased
    one in Flax; the suite runs its convolutions as im2col matrix products on CPU, PyTorch as its own
    convolutions. Layers, parameter shapes and counts, norm placement, skips and read-out are the same.
    """
    _require(model, activation="relu", init="he", bias_var=0.0, dtype="float32")
    if model["norm"] not in NORMS:
        raise ValueError(f"the PyTorch peer of the resnet family implements norm {sorted(NORMS)}, "
                         f"got {model['norm']!r}")
    net = ResNet(model, input_shape[-1], out_dim)
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                _init_weight(layer.weight, 2.0 / layer.weight[0].numel(), generator)  # He: 2 / fan_in
                layer.bias.zero_()
    return net


# family -> (factory(model config, input_shape, output_dim, generator) -> nn.Module, the stored inputs' layout
# for it). Each factory builds the suite's model of that family in PyTorch.
TORCH_MODELS = {
    "mlp": (torch_mlp, lambda x: x.reshape(len(x), -1)),
    "rnn": (torch_rnn, lambda x: x),  # (batch, time, features): batch_first
    "resnet": (torch_resnet, lambda x: x.permute(0, 3, 1, 2).contiguous()),  # NHWC -> NCHW
}


def _stored_rows(task, config: dict, layout):
    """sample(generator, seeds=None): rows drawn uniformly with replacement from the stored training set."""
    x_np, y_np = (np.array(a) for a in task.data["train"])  # writable copies
    x_all, y_all = layout(torch.from_numpy(x_np)), torch.from_numpy(y_np)
    if not y_all.is_floating_point():
        y_all = y_all.long()  # class labels, as cross_entropy takes them
    batch = config["batch_size"]

    def sample(generator, seeds=None):
        idx = torch.randint(0, len(x_all), (batch,) if seeds is None else (seeds, batch), generator=generator)
        return x_all[idx], y_all[idx]

    return sample


def _adding_batches(task, config: dict, layout):
    """sample(generator, seeds=None): a fresh adding-problem batch per step, drawn as tasks/adding.py draws it."""
    del task, layout
    n, length = config["batch_size"], config["length"]
    half = length // 2

    def sample(generator, seeds=None):
        lead = (n,) if seeds is None else (seeds, n)
        values = torch.rand(*lead, length, generator=generator)
        first = torch.randint(0, half, (*lead, 1), generator=generator)
        second = torch.randint(half, length, (*lead, 1), generator=generator)
        markers = torch.zeros_like(values).scatter_(-1, first, 1.0).scatter_(-1, second, 1.0)
        return torch.stack([values, markers], -1), (values * markers).sum(-1, keepdim=True)

    return sample


# task name -> (batches factory (task, task config, layout) -> sample, the torch.nn.functional loss)
TORCH_TASKS = {
    "teacher_student": (_stored_rows, "mse_loss"),
    "digits": (_stored_rows, "cross_entropy"),
    "adding": (_adding_batches, "mse_loss"),
}


def torch_model(plan: dict, generator):
    """The PyTorch model of a cell's plan (same layers and initial-weight variances as the suite's)."""
    task = make_task(plan["task"])
    factory, _ = TORCH_MODELS[plan["model"]["family"]]
    return factory(plan["model"], tuple(task.input_shape), task.output_dim, generator)


def _adam(plan: dict, params):
    """torch.optim.Adam with the plan's Adam settings (optax's defaults unless the suite sets them)."""
    opt = plan["optimizer"]
    return torch.optim.Adam(params, lr=opt["lr"], betas=(opt["b1"], opt["b2"]), eps=opt["eps"])


def _loop_trainer(plan: dict, seeds: int, sample, loss_fn):
    """train(steps) -> per-seed last losses: one model and optimiser per seed, one seed after another."""
    max_norm = plan["transforms"][0]["max_norm"]
    runs = []
    for seed in range(seeds):
        generator = torch.Generator().manual_seed(seed)
        net = torch_model(plan, generator)
        params = [p for p in net.parameters() if p.requires_grad]
        runs.append((net, params, _adam(plan, params), generator))

    def train(steps):
        last = []
        for net, params, adam, generator in runs:
            for _ in range(steps):
                x, y = sample(generator)
                loss = loss_fn(net(x), y)
                adam.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, max_norm)
                adam.step()
            last.append(loss.item())
        return last

    return train


def _vmap_trainer(plan: dict, seeds: int, sample, loss_fn):
    """train(steps) -> per-seed last losses: every seed in one step, torch.func.vmap over the stacked models
    (PyTorch's model-ensembling recipe); clip per seed by its own global norm, then one Adam over the stacks
    (Adam is elementwise, so this is each seed's own Adam)."""
    max_norm = plan["transforms"][0]["max_norm"]
    nets = [torch_model(plan, torch.Generator().manual_seed(seed)) for seed in range(seeds)]
    if any(True for _ in nets[0].buffers()):
        raise ValueError("the vmap strategy trains models without buffers (no BatchNorm) only")
    stacked, _ = stack_module_state(nets)
    trainable_names = {name for name, p in nets[0].named_parameters() if p.requires_grad}
    params = {k: v.detach() for k, v in stacked.items() if k in trainable_names}
    frozen = {k: v.detach() for k, v in stacked.items() if k not in trainable_names}
    base = copy.deepcopy(nets[0]).to("meta")
    adam = _adam(plan, list(params.values()))
    generator = torch.Generator().manual_seed(0)

    def seed_loss(p, f, x, y):
        return loss_fn(functional_call(base, (p, f), (x,)), y)

    step = vmap(grad_and_value(seed_loss))

    def train(steps):
        for _ in range(steps):
            x, y = sample(generator, seeds)
            grads, losses = step(params, frozen, x, y)
            norm_S = torch.stack([g.pow(2).flatten(1).sum(1) for g in grads.values()]).sum(0).sqrt()
            coef_S = (max_norm / (norm_S + 1e-6)).clamp(max=1.0)  # as clip_grad_norm_, per seed
            for name, p in params.items():
                p.grad = grads[name] * coef_S.view(-1, *[1] * (p.dim() - 1))
            adam.step()
        return losses.tolist()

    return train


TRAINERS = {"loop": _loop_trainer, "vmap": _vmap_trainer}
