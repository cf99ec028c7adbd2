"""Gradient-explosion benchmark harness, in layers: spec (suite -> cells) -> engine -> records -> analysis -> reports,
the command line (__main__) on top (docs/REFERENCE.md, "Layout"; tests/test_layers.py)."""
import os

# XLA's CPU runtime (jaxlib 0.10) deadlocks now and then, at 0% CPU, running programs that its
# concurrency-optimised scheduler ordered: an LSTM's initialisation hung in about half of the runs with it,
# in none of 16 without it. It is off unless XLA_FLAGS set it (read when the first program compiles).
_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
if _SCHEDULER_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_SCHEDULER_FLAG}=false".strip()
