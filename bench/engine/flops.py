"""Model FLOPs of a traced program: the multiply-adds of its matrix products and convolutions.

Counted from the jaxpr, so loops count as often as they run: a `scan` body
(the time loop of a recurrent model, the step loop of a chunk) counts
`length` times, which XLA's own cost analysis does not do.
"""
from __future__ import annotations

import math

from jax.extend import core


def count(jaxpr) -> float:
    """FLOPs (2 per multiply-add) of dot_general and conv_general_dilated in a (closed) jaxpr."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2.0 * math.prod(out) * math.prod(lhs[d] for d in contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
            per_output = math.prod(rhs[d] for d in spec[1:])
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
        elif name == "scan":
            total += eqn.params["length"] * count(eqn.params["jaxpr"])
        elif name == "cond":
            total += max(count(branch) for branch in eqn.params["branches"])
        else:  # pjit, custom_jvp/vjp calls, remat, while (its body counted once): recurse
            total += sum(count(sub) for sub in core.jaxprs_in_params(eqn.params))
    return total
