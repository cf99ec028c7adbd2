"""Verdicts come from the data: made-up records in, verdicts out, and they flip when the data flips."""
import math

import pytest

from bench import claims


def record(mitigation, lr, diverged, steps=None, experiment="e", heldout=None, growth=None):
    n = len(diverged)
    return {
        "experiment": experiment,
        "config": {"mitigation": mitigation, "optimizer": {"lr": lr}},
        "per_seed": {
            "diverged": diverged,
            "steps_to_converge": steps or [None] * n,
            "final_heldout_loss": heldout or [None if d else 1.0 for d in diverged],
            "final_train_loss": [None if d else 0.5 for d in diverged],
            "max_grad_norm": [1.0] * n,
        },
        "probe": {"growth_per_layer_per_seed": growth or [1.0] * n},
    }


BASE, CURE = {"name": "none"}, {"name": "clip_by_global_norm", "max_norm": 1.0}


def grid(mitigation, diverge_from_lr, seeds=16):
    """Seeds diverge at every lr >= diverge_from_lr."""
    return [record(mitigation, lr, [lr >= diverge_from_lr] * seeds) for lr in (0.01, 0.1, 1.0)]


CLAIM = [{"id": "7", "title": "clipping cures", "comparison": [
    {"experiment": "e", "baseline": BASE, "variant": {"name": "clip_by_global_norm"}, "metric": "max_stable_lr",
     "expect": "higher"}]}]


def verdict(records, claim=CLAIM):
    return claims.verdicts(claim, records)[0]


def test_cure_that_raises_the_stable_learning_rate_is_supported():
    v = verdict(grid(BASE, 0.1) + grid(CURE, 1.0))
    assert v["verdict"] == claims.SUPPORTED
    assert v["comparisons"][0]["p"] < 1e-6


def test_the_same_data_swapped_contradicts_the_claim():
    assert verdict(grid(BASE, 1.0) + grid(CURE, 0.1))["verdict"] == claims.CONTRADICTED


def test_no_difference_gives_no_detectable_effect():
    v = verdict(grid(BASE, 0.1) + grid(CURE, 0.1))
    assert v["verdict"] == claims.NO_EFFECT and v["comparisons"][0]["p"] == 1.0


def test_a_small_difference_is_not_enough_with_few_seeds():
    base = [record(BASE, 0.1, [True, False, False, False])]
    cure = [record(CURE, 0.1, [False, False, False, False])]
    claim = [{"id": "x", "comparison": [{"experiment": "e", "baseline": BASE, "variant": CURE,
                                          "metric": "divergence_rate", "expect": "lower"}]}]
    assert verdict(base + cure, claim)["verdict"] == claims.NO_EFFECT


def test_fisher_test_on_divergence_rates():
    base = [record(BASE, 0.1, [True] * 12 + [False] * 4)]
    cure = [record(CURE, 0.1, [True] * 2 + [False] * 14)]
    row = claims.test(claims.sample(base, "divergence_rate"), claims.sample(cure, "divergence_rate"),
                      "divergence_rate")
    # two-sided Fisher p for [[2, 14], [12, 4]]: sum of hypergeometric tables as or less likely (by hand: 9.65e-4)
    assert row["p"] == pytest.approx(9.6505e-4, rel=1e-3)
    assert row["direction"] == -1


def test_max_stable_lr_per_seed():
    recs = [record(BASE, 0.01, [False, False, True]), record(BASE, 0.1, [False, True, False]),
            record(BASE, 1.0, [True, False, False])]
    # seed 2 diverged at the smallest lr: 0 even though it survived larger ones
    assert claims.sample(recs, "max_stable_lr") == [0.1, 0.01, 0.0]


def test_steps_count_never_converged_and_diverged_as_infinity():
    recs = [record(BASE, 0.1, [False, False, True], steps=[10, None, None])]
    assert claims.sample(recs, "steps_to_converge") == [10, math.inf, math.inf]


def test_probe_growth_is_read_once_not_per_learning_rate():
    recs = [record(BASE, lr, [False] * 3, growth=[1.0, 2.0, 3.0]) for lr in (0.1, 1.0)]
    assert claims.sample(recs, "probe_growth") == [1.0, 2.0, 3.0]


def test_holm_correction():
    assert claims.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert claims.holm([0.5]) == [0.5]


def test_mixed_verdicts_say_the_regime():
    other = [{"name": "init", "init": "he"}]
    recs = grid(BASE, 0.1) + grid(CURE, 1.0) + grid(other[0], 0.1)
    claim = [{"id": "8", "comparison": [
        {"experiment": "e", "regime": "clip", "baseline": BASE, "variant": CURE, "metric": "max_stable_lr",
         "expect": "higher"},
        {"experiment": "e", "regime": "he", "baseline": BASE, "variant": other[0], "metric": "max_stable_lr",
         "expect": "higher"}]}]
    v = verdict(recs, claim)
    assert v["verdict"].startswith("depends on regime")
    assert "supported for clip" in v["verdict"] and "no detectable effect for he" in v["verdict"]
