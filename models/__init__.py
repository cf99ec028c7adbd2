"""Model families by name. Each module exports DESCRIPTION, Config and Model.

`Model(config, input_shape, output_dim, sequence_output=False, rngs=...)` is a
Flax NNX module whose `__call__(x, train=...)` returns the prediction. It
raises ValueError when the task's shapes do not fit the family (the suite
reports that as bad input). `forward(x, train=..., shifts=None)` returns
(prediction, pre-activations, activations): lists with one array per layer
(per time step for recurrent models), input side first; `shifts`, one array
per entry shaped like it, is added to each pre-activation, so the loss
gradient with respect to a zero shift is the gradient with respect to that
pre-activation (gradient probes).

Optional, read by the harness where a family has them:
`lr_groups(adaptive)` -> None or (param_labels function, {group: learning-rate
multiplier}) for per-group learning rates (muP; `adaptive`: the optimiser is
Adam-like); a module-level DIAGNOSTICS dict {name: ("max" | "min",
description)} with a model method `diagnostics(x, train=..., shifts=None)`
-> (prediction, {name: scalar}), the scalars reduced over training steps.
A task whose examples are shaped (T,) gives integer tokens in [0, output_dim).
"""
from gradbench.models import mlp
from gradbench.models import resnet
from gradbench.models import rnn
from gradbench.models import transformer

FAMILIES = {
    "mlp": mlp,
    "resnet": resnet,
    "rnn": rnn,
    "transformer": transformer,
}
