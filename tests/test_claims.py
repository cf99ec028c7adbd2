"""Verdicts come from the data: made-up records in, verdicts out, and they flip when the data flips."""
import itertools
import math

import numpy as np
import pytest

from bench.analysis import claims, stats

LRS = (0.01, 0.1, 1.0)


def record(mitigation, lr, trained, e2e_init=None, e2e_mid=None, validation=None, heldout=None, steps=None,
           diverged=None):
    """A made-up results record: per-seed outcomes and explosion measurements (a failed seed diverged unless
    `diverged` says which did)."""
    n = len(trained)
    e2e_init = e2e_init or [1.0] * n
    e2e_mid = e2e_mid or [1.0] * n
    diverged = [not t for t in trained] if diverged is None else diverged
    return {
        "experiment": "e",
        "config": {"mitigation": mitigation, "optimizer": {"lr": lr}},
        "thresholds": {"trivial_loss": 1.0},
        "failure_rate": 1 - sum(trained) / n,
        "quality": {"final_heldout_loss": 0.3, "final_heldout_metric": 0.3},
        "converged": sum(trained),
        "per_seed": {
            "seed": list(range(n)),
            "trained": trained,
            "diverged": diverged,
            "collapsed": [not t and not d for t, d in zip(trained, diverged)],
            "steps_to_converge": steps or [10 if t else None for t in trained],
            "final_validation_loss": validation or [0.3 if t else None for t in trained],
            "final_heldout_loss": heldout or [0.3 if t else None for t in trained],
            "final_heldout_metric": [0.9 if t else None for t in trained],
            "final_train_loss": [0.2 if t else None for t in trained],
        },
        "explosion": {"fractions": [0.0, 0.1, 0.5, 1.0],
                      "per_seed": {"e2e_ratio": [[a, b, b, b] for a, b in zip(e2e_init, e2e_mid)],
                                   "growth_per_layer": [[1.0] * 4] * n}},
    }


BASE, CURE = {"name": "none"}, {"name": "clip_by_global_norm", "max_norm": 1.0}


def grid(mitigation, fails_from_lr, seeds=16, **kw):
    """Seeds train at every lr below fails_from_lr and fail from it on."""
    return [record(mitigation, lr, [lr < fails_from_lr] * seeds, **kw) for lr in LRS]


def claim(expect="better", **extra):
    return [{"id": "7", "title": "clipping cures", "judged_on": ["trainability"], "comparison": [
        {"experiment": "e", "baseline": BASE, "variant": {"name": "clip_by_global_norm"}, "expect": expect,
         **extra}]}]


def verdict(records, claim_tables=None):
    return claims.verdicts(claim_tables or claim(), records)[0]


def test_cure_that_raises_the_critical_learning_rate_is_supported():
    v = verdict(grid(BASE, 0.1) + grid(CURE, 1.0))
    q = v["comparisons"][0]["questions"]["trainability"]
    assert v["verdict"] == claims.SUPPORTED
    assert q["effect"] == pytest.approx(10.0) and q["median"] == [0.01, 0.1]
    assert q["p"] < 1e-4


def test_the_same_data_swapped_contradicts_the_claim():
    assert verdict(grid(BASE, 1.0) + grid(CURE, 0.1))["verdict"] == claims.CONTRADICTED


def test_no_difference_gives_no_detectable_effect():
    v = verdict(grid(BASE, 0.1) + grid(CURE, 0.1))
    assert v["verdict"] == claims.NO_EFFECT and v["comparisons"][0]["questions"]["trainability"]["p"] == 1.0


def test_both_arms_censored_at_the_top_is_inconclusive():
    v = verdict(grid(BASE, 10.0) + grid(CURE, 10.0))
    q = v["comparisons"][0]["questions"]["trainability"]
    assert v["verdict"] == claims.INCONCLUSIVE and "censored above" in q["note"]


def test_an_underpowered_comparison_is_inconclusive_not_no_effect():
    # 3 seeds each: the variant's critical lr is 10x higher in 2 of 3 seeds, but 3 vs 3 cannot reach p < 0.05.
    base = [record(BASE, lr, [lr < 0.1] * 3) for lr in LRS]
    cure = [record(CURE, lr, [lr < f for f in (1.0, 1.0, 0.1)]) for lr in LRS]
    v = verdict(base + cure)
    q = v["comparisons"][0]["questions"]["trainability"]
    assert q["p_adjusted"] > 0.05 and q["ci"][1] >= 1.25
    assert v["verdict"] == claims.INCONCLUSIVE


def test_a_significant_effect_below_the_minimum_effect_is_not_supported():
    base = grid(BASE, 10.0, e2e_init=[1.0] * 16)
    cure = grid(CURE, 10.0, e2e_init=[1.1] * 16)  # 1.1x: every seed higher, far below the 1.25x minimum effect
    tables = [{"id": "x", "judged_on": ["init"], "comparison": [
        {"experiment": "e", "baseline": BASE, "variant": CURE, "expect": "worse"}]}]
    v = verdict(base + cure, tables)
    q = v["comparisons"][0]["questions"]["init"]
    assert q["p_adjusted"] < 1e-3 and q["effect"] == pytest.approx(1.1)
    assert v["verdict"] == claims.NO_EFFECT


def test_explosion_questions_read_the_e2e_ratio_at_init_and_in_training():
    rng = np.random.default_rng(0)
    base = grid(BASE, 1.0, e2e_init=list(rng.uniform(20, 40, 16)), e2e_mid=list(rng.uniform(50, 90, 16)))
    cure = grid(CURE, 1.0, e2e_init=list(rng.uniform(20, 40, 16)), e2e_mid=list(rng.uniform(1, 2, 16)))
    tables = [{"id": "x", "judged_on": ["init", "training"], "comparison": [
        {"experiment": "e", "baseline": BASE, "variant": CURE, "expect": "better", "lr": 0.1}]}]
    v = verdict(base + cure, tables)
    q = v["comparisons"][0]["questions"]
    assert q["training"]["verdict"] == claims.SUPPORTED and q["training"]["effect"] < 0.1
    assert q["init"]["verdict"] in (claims.NO_EFFECT, claims.INCONCLUSIVE)
    assert v["verdict"] == claims.SUPPORTED  # the only decisive answer


def test_permutation_p_value_equals_a_brute_force_count():
    base, var = np.array([1.0, 2.0, 2.0, 5.0]), np.array([2.0, 6.0, 7.0, 7.0])  # ties on purpose
    pooled = np.concatenate([base, var])
    ranks = __import__("scipy").stats.rankdata(pooled)
    observed = abs(ranks[4:].mean() - ranks[:4].mean())
    hits = total = 0
    for idx in itertools.combinations(range(8), 4):
        v = np.zeros(8, bool)
        v[list(idx)] = True
        hits += abs(ranks[v].mean() - ranks[~v].mean()) >= observed - 1e-12
        total += 1
    assert stats.rank_sum_p(base, var)[0] == pytest.approx(hits / total)


def test_hodges_lehmann_and_degenerate_values():
    assert stats.hodges_lehmann(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == pytest.approx(2.0)
    # a vanished (0) and an overflowed (inf) seed are kept: ranked at the ends, effect bounded
    out = stats.compare([0.0, 1.0, 1.0, 1.0], [math.inf, 10.0, 10.0, 10.0], log_scale=True)
    assert out["n"] == [4, 4] and out["dropped"] == 0 and math.isfinite(out["effect"]) and out["effect"] > 1
    assert out["bound"] == "≥"  # both infinities (log 0 in the baseline, inf in the variant) push it up
    # A variant whose seeds all overflowed: the effect is the baseline's largest over its values, whatever the variant.
    base = [1.0, 2.0, 3.0, 4.0]
    out = stats.compare(base, [math.inf] * 4, log_scale=True, paired=True)
    expected = math.exp(stats.paired_hodges_lehmann(np.log(4.0) - np.log(base)))
    assert out["effect"] == pytest.approx(expected) and out["bound"] == "≥"
    assert stats.compare([math.inf, 1.0, 2.0], [1.0, 1.5, 2.5], log_scale=True)["bound"] == "≤"
    assert stats.compare([1.0, 2.0], [3.0, 4.0], log_scale=True)["bound"] == ""


def test_holm_correction():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5]) == [0.5]


def test_mixed_verdicts_say_the_regime_and_question():
    other = {"name": "init", "init": "he"}
    recs = grid(BASE, 1.0) + grid(CURE, 10.0) + grid(other, 0.1)  # critical lr 0.1, > 1 (censored), 0.01
    tables = [{"id": "8", "judged_on": ["trainability"], "comparison": [
        {"experiment": "e", "regime": "clip", "baseline": BASE, "variant": CURE, "expect": "better"},
        {"experiment": "e", "regime": "he", "baseline": BASE, "variant": other, "expect": "better"}]}]
    v = verdict(recs, tables)
    assert v["verdict"].startswith("depends")
    assert v["verdict"] == "depends: contradicted on trainability (he); supported on trainability (clip)"


def test_tuned_quality_uses_the_validation_split():
    # validation picks lr 0.1 (loss 0.2); the held-out loss reported is the one at 0.1, not the lowest held-out.
    recs = [record(BASE, lr, [True] * 4, validation=[v] * 4, heldout=[h] * 4)
            for lr, v, h in ((0.01, 0.5, 0.1), (0.1, 0.2, 0.4), (1.0, 0.6, 0.2))]
    arm = claims.Arm(recs)
    assert arm.tuned_index() == 1
    values, _ = claims.METRICS["tuned_heldout_loss"].values(arm, None)
    np.testing.assert_allclose(values, [0.4] * 4)


def test_paired_sign_flip_p_equals_a_brute_force_count():
    base = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    var = np.array([1.5, 2.0, 3.9, 3.5, 7.0, 9.0])  # one zero difference, one negative
    d = var - base
    ranks = __import__("scipy").stats.rankdata(np.abs(d))
    observed = abs(np.sum(np.sign(d) * ranks))
    hits = total = 0
    for signs in itertools.product((1, -1), repeat=len(d)):
        flipped = d * np.array(signs)
        hits += abs(np.sum(np.sign(flipped) * __import__("scipy").stats.rankdata(np.abs(flipped)))) >= observed - 1e-9
        total += 1
    assert stats.signed_rank_p(var - base)[0] == pytest.approx(hits / total)


def test_identical_paired_arms_give_no_detectable_effect_with_a_tight_interval():
    # The same initialisation measured in two arms (clipping cannot change the gradient at init): paired
    # differences are all zero, so the interval is exactly no effect, however spread the seeds are.
    values = np.exp(np.random.default_rng(1).normal(0, 1, 12))
    out = stats.compare(values, values.copy(), log_scale=True, paired=True)
    assert out["p"] == 1.0 and out["effect"] == 1.0 and out["ci"] == [1.0, 1.0]
    out["p_adjusted"] = 1.0
    assert claims.judge(out, +1, math.log(1.25)) == claims.NO_EFFECT
    unpaired = stats.compare(values, values.copy(), log_scale=True)
    assert unpaired["ci"][0] < 0.8 and unpaired["ci"][1] > 1.25  # the same data unpaired cannot tell


def test_datasets_are_strata_whose_seeds_are_the_replicates():
    def on(data_seed, recs):
        for r in recs:
            r["config"]["task"] = {"data_seed": data_seed}
        return recs
    # 3 seeds per dataset cannot decide; 4 datasets of 3 seeds (12 replicates) can.
    recs = []
    for k in range(4):
        recs += on(k, [record(BASE, lr, [lr < 0.1] * 3) for lr in LRS])
        recs += on(k, [record(CURE, lr, [lr < 10.0] * 3) for lr in LRS])
    v = verdict(recs)
    q = v["comparisons"][0]["questions"]["trainability"]
    assert q["n"] == [12, 12] and "(4 datasets as strata)" in q["what"]
    assert q["test"] == "stratified signed-rank (4 strata), exact" and q["p"] == pytest.approx(2 / 2 ** 12)
    assert v["verdict"] == claims.SUPPORTED and q["effect"] == pytest.approx(100.0)


def test_a_baseline_on_more_seeds_pairs_with_a_variant_on_the_seeds_both_ran():
    # The baseline ran 32 seeds, the variant the first 16: the comparison reads those 16 of the baseline,
    # paired seed by seed. Its extra seeds (here failing at every learning rate) change nothing.
    def base_record(lr):
        r = record(BASE, lr, [lr < 1.0] * 16 + [False] * 16, e2e_init=list(range(1, 33)))
        r["per_seed"]["seed"] = list(range(32))
        return r
    recs = [base_record(lr) for lr in LRS] + [record(CURE, lr, [lr < 1.0] * 16, e2e_init=list(range(1, 17)))
                                              for lr in LRS]
    v = verdict(recs, claim(judged_on=None, questions=["init", "trainability"]))
    comp = v["comparisons"][0]
    for name in ("init", "trainability"):
        q = comp["questions"][name]
        assert q["n"] == [16, 16] and "signed-rank" in q["test"], name
        assert q["effect"] == 1.0 and q["ci"] == [1.0, 1.0] and q["verdict"] == claims.NO_EFFECT, name
    base = comp["arms"]["baseline"]
    assert base["seeds"] == 16 and base["failure_rate"] == [0.0, 0.0, 1.0] and base["diverged"] == [0, 0, 16]
    assert base["tuned_converged"] == 16
    # Arms on disjoint seeds are compared unpaired, each on its own.
    for r in recs[3:]:
        r["per_seed"]["seed"] = list(range(100, 116))
    q = verdict(recs, claim(judged_on=None, questions=["init"]))["comparisons"][0]["questions"]["init"]
    assert q["n"] == [32, 16] and "signed-rank" not in q["test"]


def test_an_arm_whose_mitigation_sets_its_learning_rate_is_read_at_the_rate_it_ran():
    # The variant's cells sit on the grid at 0.01, 0.1 and 1 but run at ten times that (an `optimizer`
    # mitigation with its own lr): its largest divergence-free rate is 1 as run, not 0.1 as on the grid.
    base, cure = grid(BASE, 1.0), grid(CURE, 1.0)
    for r in cure:
        r["plan"] = {"optimizer": {"lr": r["config"]["optimizer"]["lr"] * 10}}
    comp = verdict(base + cure)["comparisons"][0]
    assert comp["arms"]["variant"]["lrs"] == pytest.approx([0.1, 1.0, 10.0])
    assert comp["arms"]["baseline"]["lrs"] == pytest.approx([0.01, 0.1, 1.0])
    q = comp["questions"]["trainability"]
    assert q["effect"] == pytest.approx(10.0) and q["verdict"] == claims.SUPPORTED


def test_an_arm_whose_own_lr_repeats_over_the_grid_is_refused(tmp_path):
    # A mitigation that sets its own lr runs every grid point at that lr: read as run, the arm would hold
    # several cells at one learning rate, so the suite is refused, naming the comparison.
    from bench.spec import suite
    from bench.spec.schema import SuiteError

    path = tmp_path / "own_lr.toml"
    path.write_text("""
[suite]
name = "own_lr"
seeds = 2
steps = 5
[task]
name = "teacher_student"
[model]
family = "mlp"
depth = 2
width = 4
[optimizer]
name = "sgd"
lr = [0.01, 0.1]
[[experiment]]
name = "e"
mitigation = [{ name = "none" }, { name = "optimizer", optimizer = "adam", lr = 0.001 }]
[[claim]]
id = "1"
comparison = [{ experiment = "e", baseline = { name = "none" }, variant = { name = "optimizer" }, expect = "better" }]
""")
    with pytest.raises(SuiteError, match=r"claim\[0\]\.comparison\[0\]\.variant.*several cells at one "
                                         r"learning rate as run"):
        suite.load(path)
