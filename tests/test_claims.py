"""Verdicts come from the data and the pre-registered rule: made-up records in, words out."""
import math

import numpy as np
import pytest

from gradbench.analysis import claims
from gradbench.reports import verdicts

LRS = (0.01, 0.1, 1.0)
BASE, CURE = {"name": "none"}, {"name": "clip_by_global_norm", "max_norm": 1.0}
MARGIN = math.log(1.25)


def record(mitigation, lr, trained, *, reached=None, e2e_init=None, validation=None, heldout=None, steps=None,
           diverged=None, block=0, experiment="e", log10_grads=None):
    """A made-up results record: per-seed outcomes and gradient ratios (a failed seed diverged unless `diverged`
    says which did; a trained seed reaches the target in 10 steps unless `reached` or `steps` say otherwise)."""
    n = len(trained)
    diverged = [not t for t in trained] if diverged is None else diverged
    reached = trained if reached is None else reached
    e2e_init = e2e_init or [1.0] * n
    config = {"mitigation": mitigation, "optimizer": {"lr": lr}, "task": {}}
    if block:
        config["replicate"] = block
    return {
        "experiment": experiment, "config": config, "thresholds": {"trivial_loss": 1.0}, "throughput": {},
        "per_seed": {
            "seed": [block * 100 + i for i in range(n)],
            "trained": trained, "diverged": diverged,
            "collapsed": [not t and not d for t, d in zip(trained, diverged)],
            "steps_to_converge": steps or [10 if r else None for r in reached],
            "final_validation_loss": validation or [0.3 if t else None for t in trained],
            "final_heldout_loss": heldout or [0.3 if t else None for t in trained],
            "final_heldout_metric": [0.9 if t else None for t in trained],
            "final_train_loss": [0.2 if t else None for t in trained],
        },
        "explosion": {"fractions": [0.0, 0.1, 0.5, 1.0], "per_seed": {
            "e2e_ratio": [[a, a, a, a] for a in e2e_init], "growth_per_layer": [[1.0] * 4] * n,
            **({"log10_preact_grad_init": log10_grads} if log10_grads else {})}},
    }


def grid(mitigation, trained, **kw):
    """The same per-seed outcomes at every learning rate of the grid."""
    return [record(mitigation, lr, list(trained), **kw) for lr in LRS]


def claim(measure="reach", expect="better", **extra):
    return [{"id": "7", "title": "clipping cures", "question": "q", "rationale": "r", "secondary": [],
             "primary": {"experiment": "e", "variant_experiment": None, "baseline": BASE, "variant": CURE,
                         "measure": measure, "expect": expect, "lr": None, "at": 0.0, "label": None, **extra}}]


def judge(records, **kw):
    return claims.verdicts(claim(**kw), records)[0]


@pytest.mark.parametrize("effect, low, high, p, expected", [
    (0.5, 0.3, 0.7, 0.001, claims.YES),  # detected, as claimed, beyond the margin
    (-0.5, -0.7, -0.3, 0.001, claims.OPPOSITE),
    (0.1, 0.05, 0.15, 0.001, claims.NEGLIGIBLE),  # detected, wholly below the margin: negligible, not "no effect"
    (0.2, 0.1, 0.3, 0.01, claims.UNSETTLED),  # detected, below the margin, but the interval reaches past it
    (0.05, -0.1, 0.2, 0.4, claims.NEGLIGIBLE),  # interval inside the margin both ways
    (-0.2, -0.6, 0.1, 0.3, claims.NO),  # the claimed effect excluded, the opposite not shown
    (0.3, -0.1, 0.7, 0.2, claims.UNSETTLED),
    (0.5, 0.3, 0.7, 0.06, claims.UNSETTLED),  # large but not detected
])
def test_the_vocabulary_follows_the_interval_the_test_and_the_margin(effect, low, high, p, expected):
    assert claims.word(effect, low, high, p, MARGIN) == expected


def test_a_cure_whose_seeds_reach_the_target_is_yes_and_swapped_is_opposite():
    records = grid(BASE, [False] * 16, reached=[False] * 16, diverged=[True] * 16)
    records[0] = record(BASE, 0.01, [True] * 16, reached=[False] * 16)  # trains somewhere, never reaches
    cure = grid(CURE, [True] * 16)
    c = judge(records + cure)
    assert c["primary"]["word"] == claims.YES and c["primary"]["counts"] == [0, 16]
    swapped = judge([{**r, "config": {**r["config"], "mitigation": CURE if r["config"]["mitigation"] == BASE
                                      else BASE}} for r in records + cure])
    assert swapped["primary"]["word"] == claims.OPPOSITE


def test_an_arm_that_never_learns_is_not_a_cure():
    # The variant never diverges but never trains either (it collapses at every lr): a trainability metric that
    # rewards not diverging would call it a cure; reaching the target says it is none.
    base = grid(BASE, [True] * 8 + [False] * 8, diverged=[False] * 8 + [True] * 8)
    never = grid(CURE, [False] * 16, diverged=[False] * 16)
    c = judge(base + never)
    assert c["verdict"] == claims.DEGENERATE and c["primary"]["word"] == claims.DEGENERATE
    assert "variant never trains" in c["primary"]["reason"]
    assert verdicts.finding(c).startswith("degenerate: variant never trains")
    # ... and one that trains but reaches the target less often is no cure either.
    worse = grid(CURE, [True] * 16, reached=[True] * 2 + [False] * 14)
    assert judge(base + worse)["primary"]["word"] == claims.OPPOSITE


def test_vanishing_is_not_a_cure():
    # Baseline explodes (x40); the "cure" makes the gradient vanish (x1e-4), beyond the same factor the other way.
    base = grid(BASE, [True] * 16, e2e_init=list(np.linspace(30, 50, 16)))
    vanish = grid(CURE, [True] * 16, e2e_init=list(np.linspace(0.5e-4, 1.5e-4, 16)))
    c = judge(base + vanish, measure="gradient_distance")
    assert c["primary"]["word"] == claims.OPPOSITE
    assert "(vanishing)" in verdicts.finding(c) and "-> 0.0001" in verdicts.finding(c)
    # A cure that brings the gradient near 1 is one.
    near = grid(CURE, [True] * 16, e2e_init=list(np.linspace(0.9, 1.2, 16)))
    assert judge(base + near, measure="gradient_distance")["primary"]["word"] == claims.YES


def test_an_underflowed_gradient_is_no_value_never_explosion():
    # float16: the output side's gradient underflowed to 0, so input / output is infinite: underflow, not explosion.
    zero_at_output = [[0.0, -1.0, -math.inf]] * 4 + [[0.0, -1.0, -2.0]] * 12
    ratios = [math.inf] * 4 + [100.0] * 12
    r = record(BASE, 0.01, [True] * 16, e2e_init=ratios, log10_grads=zero_at_output)
    values = claims.e2e_ratio(r, 0.0)
    assert np.isnan(values[:4]).all() and (values[4:] == 100.0).all()
    # An overflow leaves non-finite layers anywhere (a -inf among them): with a finite output side it is explosion.
    overflow = record(BASE, 0.01, [True] * 2, e2e_init=[math.inf] * 2,
                      log10_grads=[[None, -math.inf, 38.0, 21.5]] * 2)
    assert np.isposinf(claims.e2e_ratio(overflow, 0.0)).all()


def test_a_degenerate_arm_decides_nothing():
    both_never = grid(BASE, [False] * 16) + grid(CURE, [False] * 16)
    c = judge(both_never)
    assert c["verdict"] == claims.DEGENERATE and c["leans"] is None
    assert verdicts.verdict_cell(c) == "**degenerate**"
    assert "baseline and variant never train" in c["primary"]["reason"]


def test_a_never_converged_seed_is_never_replaced_by_a_finite_value():
    # 14 of 16 baseline seeds never reach the target: their steps are not the largest finite value, and the
    # comparison of steps says it cannot be made (reaching the target is the question then).
    base = grid(BASE, [True] * 16, steps=[180, 187] + [None] * 14, reached=[True] * 2 + [False] * 14)
    fast = grid(CURE, [True] * 16, steps=list(range(20, 36)))
    c = judge(base + fast, measure="steps", expect="worse")
    assert c["primary"]["word"] == claims.DEGENERATE
    assert "fewer than half the seeds of the baseline reach the target" in c["primary"]["reason"]
    assert judge(base + fast)["primary"]["counts"] == [2, 16]
    # A diverged seed's held-out loss is infinite, so the effect is a bound, never a finite stand-in.
    held = grid(CURE, [True] * 15 + [False], heldout=[0.3] * 15 + [0.1])
    answer = judge(grid(BASE, [True] * 16) + held, measure="heldout_loss")["primary"]
    assert answer["bound"] == "≥" and verdicts.effect_text(answer).startswith("≥x")


def test_tuned_learning_rate_comes_from_the_validation_split():
    # Validation picks lr 0.1 (loss 0.2): the variant is read there, where 4 of 16 reach the target, not at the
    # lr where most do.
    var = [record(CURE, lr, [True] * 16, validation=[v] * 16, reached=[k <= r for k in range(16)])
           for lr, v, r in ((0.01, 0.5, 15), (0.1, 0.2, 3), (1.0, 0.6, 15))]
    c = judge(grid(BASE, [True] * 16, reached=[False] * 16) + var)
    assert c["primary"]["counts"] == [0, 4] and c["primary"]["arms"]["variant"]["tuned_lr"] == 0.1


def test_a_verdict_is_settled_only_when_every_replicate_block_agrees():
    base = [r for b in (0, 1) for r in grid(BASE, [True] * 16, reached=[False] * 16, block=b)]
    cure = [r for b in (0, 1) for r in grid(CURE, [True] * 16, block=b)]
    c = judge(base + cure)
    assert [b["word"] for b in c["primary"]["blocks"]] == [claims.YES, claims.YES]
    assert c["verdict"] == claims.YES and c["settled"] and c["primary"]["n"] == [32, 32]
    assert verdicts.agreement(c) == "2 of 2 blocks: yes, yes"
    assert verdicts.agreement({**c, "primary": {**c["primary"], "word": claims.NO}}) == \
        "0 of 2 blocks give the pooled no: yes, yes"
    # Block 1's cure reaches the target on 4 of 16 seeds only: pooled still yes, block 1 not, so unsettled.
    cure = grid(CURE, [True] * 16) + grid(CURE, [True] * 16, reached=[True] * 4 + [False] * 12, block=1)
    c = judge(base + cure)
    assert c["primary"]["word"] == claims.YES and c["primary"]["blocks"][1]["word"] != claims.YES
    assert c["verdict"] == claims.UNSETTLED and c["leans"] == claims.YES
    assert verdicts.verdict_cell(c) == "**unsettled** (leans yes)"


def test_censored_and_grid_limited_effects_print_as_bounds_and_grid_steps():
    # Every baseline seed diverges from lr 0.1 on, every variant seed nowhere: the variant's divergence-free lr
    # is censored at the top (1.0 against 0.01), so the effect is at least two grid steps, not a point.
    base = [record(BASE, lr, [lr < 0.1] * 8) for lr in LRS]
    var = grid(CURE, [True] * 8)
    answer = judge(base + var, measure="stable_lr")["primary"]
    assert answer["bound"] == "≥"
    assert verdicts.effect_text(answer) == "≥x100 (at least 2 grid steps) [100, …]"  # open above: no upper end
    # Both arms censored at the top: nothing to compare.
    assert judge(grid(BASE, [True] * 8) + var, measure="stable_lr")["primary"]["word"] == claims.DEGENERATE


def test_neither_arm_reaching_the_target_decides_nothing():
    # Both arms train (no divergence, no collapse) but no seed of either reaches the target at any lr: a
    # comparison of learning at the measure's floor can only come out "negligible", so it is degenerate.
    base = grid(BASE, [True] * 16, reached=[False] * 16)
    var = grid(CURE, [True] * 16, reached=[False] * 16)
    for measure in ("reach_range", "reach"):
        answer = judge(base + var, measure=measure)["primary"]
        assert answer["word"] == claims.DEGENERATE, measure
        assert answer["reason"] == "neither arm reaches the target, on any seed at any learning rate"
    # One seed of one arm reaching it somewhere is a comparison again.
    one = grid(CURE, [True] * 16, reached=[True] + [False] * 15)
    assert judge(base + one, measure="reach_range")["primary"]["word"] != claims.DEGENERATE


def test_a_range_that_reaches_the_end_of_the_grid_is_a_bound():
    # Every variant seed reaches the target at every lr, the grid's top and bottom included: its range could go
    # on beyond the grid, so the effect is a lower bound and its interval has no upper end.
    base = [record(BASE, lr, [True] * 16, reached=[lr == 0.1] * 16) for lr in LRS]
    answer = judge(base + grid(CURE, [True] * 16), measure="reach_range")["primary"]
    assert answer["word"] == claims.YES and answer["bound"] == "≥"
    assert verdicts.effect_text(answer) == "≥+2 decades [2, …]"  # 3 grid points against 1, one decade apart
    # Both arms' median seeds at the grid's end: nothing to compare.
    both = judge(grid(BASE, [True] * 16) + grid(CURE, [True] * 16), measure="reach_range")["primary"]
    assert both["word"] == claims.DEGENERATE and "censored above" in both["reason"]


def test_overfitting_is_read_at_the_same_training_loss():
    # Seeds 0-7 reached the target (the training loss it names); 8-15 trained but stopped short: their gap
    # is left out, never compared with the others'.
    r = record(BASE, 0.01, [True] * 16, reached=[True] * 8 + [False] * 8)
    gap = claims.MEASURES["overfitting_gap"].values(claims.Arm([r]), claims.Arm([r]),
                                                      {"lr": None, "at": 0.0})[0]
    assert np.allclose(gap[:8], 0.1) and np.isnan(gap[8:]).all()


def test_a_ratio_of_zero_on_every_seed_prints_as_zero_not_as_a_bound():
    # Equal weights: every variant seed's input-side gradient is exactly 0, so every ratio is 0 and the effect
    # is x0, not the finite stand-in that decides the word.
    base = grid(BASE, [True] * 16, e2e_init=list(np.linspace(20, 40, 16)))
    zero = grid(CURE, [True] * 16, e2e_init=[0.0] * 16)
    answer = judge(base + zero, measure="gradient", expect="worse")["primary"]
    assert answer["word"] == claims.OPPOSITE and answer["every_seed"] == ["variant", "0"]
    assert verdicts.effect_text(answer) == "x0 (every variant seed 0)"


def test_a_ratio_that_could_not_be_computed_beside_layers_that_do_not_grow_has_no_value():
    # The ratio is not a number: with a finite per-layer growth (float16 norms that could not be computed) it
    # is no value; with a growth that is not finite either, explosion.
    r = record(BASE, 0.01, [True] * 3, e2e_init=[math.nan] * 3)
    r["explosion"]["per_seed"]["growth_per_layer"] = [[0.5] * 4, [math.nan] * 4, [0.0] * 4]
    values = claims.e2e_ratio(r, 0.0)
    assert np.isnan(values[0]) and np.isposinf(values[1]) and values[2] == 0.0


def test_an_effect_at_the_margin_up_to_rounding_is_at_the_margin():
    # One grid step wider, on a grid of rounded learning rates (0.0178, 0.0316, ...): whole steps, and an effect
    # of one step that rounding puts a hair below the margin still reaches it.
    lrs = [0.01, 0.0178, 0.0316, 0.0562, 0.1]
    widths = claims.metrics.trained_width_decades(lrs, [[False, True, True, True, False], [True] * 5])
    step = float(np.mean(np.diff(np.log10(lrs))))
    assert widths.tolist() == [3 * step, 5 * step]
    assert claims.word(step * (1 - 1e-14), 0.1, 0.4, 0.01, step) == claims.YES
    assert claims.word(0.1, 0.05, step * (1 - 1e-14), 0.3, step) == claims.UNSETTLED  # the interval reaches it
