"""Model families by name. Each module exports DESCRIPTION, Config and Model.

`Model(config, input_shape, output_dim, rngs=...)` is a Flax NNX module whose
`__call__(x, train=...)` returns the prediction; `forward` additionally
returns per-layer pre-activations and activations for gradient probes.
"""
from models import mlp

FAMILIES = {
    "mlp": mlp,
}
