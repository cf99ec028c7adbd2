"""The verdict rules of docs/METHODS.md on made-up records: exact tests, rates, 0/0, failed runs, directional
claims, the judged family and the stability of an answer."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bench.analysis import claims, stats
from test_claims import BASE, CURE, LRS, grid, record


def one(comparison, judged_on=("trainability",)):
    return [{"id": "c", "judged_on": list(judged_on), "comparison": [
        {"experiment": "e", "baseline": BASE, "variant": CURE, **comparison}]}]


def test_signed_rank_p_is_exact_without_a_monte_carlo_floor():
    d = np.array([0.3, -1.2, 2.5, 0.7, 1.9, -0.4, 3.1, 0.9, 1.4, 2.2, -0.8, 1.1])  # no ties, no zeros
    p, test = stats.signed_rank_p(d)
    assert test == "signed-rank, exact"
    assert p == pytest.approx(scipy_stats.wilcoxon(d, method="exact").pvalue)
    # 16 seeds all one way: 2 of the 2^16 sign patterns are as extreme, p = 2 / 65536 (not 1e-4 from 20,000 draws)
    assert stats.signed_rank_p(np.arange(1.0, 17.0))[0] == pytest.approx(2 / 2 ** 16)


def test_rank_sum_p_is_scipys_exact_test_without_ties():
    b, v = np.array([1.0, 2.5, 3.0, 4.2, 0.5]), np.array([5.0, 6.1, 2.9, 7.3, 8.8, 9.0])
    p, test = stats.rank_sum_p(b, v)
    assert test == "rank-sum, exact" and p == pytest.approx(scipy_stats.mannwhitneyu(v, b, method="exact").pvalue)


def test_eight_of_eight_failing_against_one_of_eight_is_decisive_as_a_rate():
    # The radius-1.5 RNN case: fails on 8 of 8 seeds without clipping, on 1 of 8 with it, at the stated lr.
    recs = [record(BASE, lr, [False] * 8) for lr in LRS] + \
        [record(CURE, lr, [True] * 7 + [False]) for lr in LRS]
    v = claims.verdicts(one({"expect": "better", "lr": 0.1, "questions": ["rate"]}), recs)[0]
    q = v["comparisons"][0]["questions"]["rate"]
    assert q["test"] == "McNemar, exact" and q["p"] == pytest.approx(2 * 0.5 ** 7)  # 7 discordant pairs
    assert q["effect"] == pytest.approx(-7 / 8) and q["ci"][1] < -0.25
    assert q["family"] == 1 and v["verdict"] == claims.SUPPORTED and claims.STABLE <= q["stability"] < 1
    unpaired = stats.compare_rates([True] * 8, [True] + [False] * 7)
    assert unpaired["test"] == "Fisher, exact"
    assert unpaired["p"] == pytest.approx(scipy_stats.fisher_exact([[1, 7], [8, 0]]).pvalue)


def test_an_all_zero_gradient_is_vanishing_never_explosion():
    # The equal-entries arm: every pre-activation gradient exactly zero, ratio stored as null (0/0), growth 0.
    base = grid(BASE, 1.0, e2e_init=list(np.linspace(20, 40, 16)))
    var = grid(CURE, 1.0, e2e_init=[None] * 16)
    for r in var:
        r["explosion"]["per_seed"]["growth_per_layer"] = [[0.0] * 4] * 16
    np.testing.assert_array_equal(claims.e2e_ratio(var[0], 0.0), np.zeros(16))
    v = claims.verdicts(one({"expect": "worse"}, ["init"]), base + var)[0]
    assert v["comparisons"][0]["questions"]["init"]["verdict"] == claims.CONTRADICTED  # never "supported: >= x5"
    # read as either way (distance from 1), the same seeds are the most extreme there are
    v = claims.verdicts(one({"expect": "worse", "gradient": "either"}, ["init"]), base + var)[0]
    assert v["verdict"] == claims.SUPPORTED
    # a gradient that is not a number (growth NaN too) is explosion
    for r in var:
        r["explosion"]["per_seed"]["growth_per_layer"] = [[None] * 4] * 16
    assert np.isposinf(claims.e2e_ratio(var[0], 0.0)).all()


def test_vanishing_is_its_own_reading_of_the_ratio():
    base = grid(BASE, 1.0, e2e_init=list(np.linspace(0.5, 2.0, 16)))
    var = grid(CURE, 1.0, e2e_init=list(np.linspace(1e-9, 1e-8, 16)))
    as_explosion = claims.verdicts(one({"expect": "worse"}, ["init"]), base + var)[0]
    as_vanishing = claims.verdicts(one({"expect": "worse", "gradient": "vanishing"}, ["init"]), base + var)[0]
    assert as_explosion["verdict"] == claims.CONTRADICTED and as_vanishing["verdict"] == claims.SUPPORTED
    assert "vanishes" in as_explosion["comparisons"][0]["questions"]["init"]["remark"]


def test_a_failed_run_keeps_its_own_loss_capped_at_the_trivial_loss():
    # "collapses 12 of 12 vs trains 12 of 12": the failed arm's held-out loss is its own (capped at trivial 1.0),
    # not the other arm's worst value, so the effect is the real ratio, about 0.3.
    base = [record(BASE, lr, [False] * 12, heldout=[5.0] * 12, diverged=[False] * 12) for lr in LRS]
    cure = [record(CURE, lr, [True] * 12, heldout=list(np.linspace(0.28, 0.32, 12))) for lr in LRS]
    v = claims.verdicts(one({"expect": "better", "metric": "tuned_heldout_loss"}), base + cure)[0]
    q = v["comparisons"][0]["questions"]["trainability"]
    assert q["median"][0] == 1.0 and q["effect"] == pytest.approx(0.3, rel=0.05) and q["bound"] == ""
    assert v["verdict"] == claims.SUPPORTED


def test_the_divergence_free_lr_ignores_collapse_at_small_learning_rates():
    # Seeds collapse (too slow) at lr 0.01 and diverge from 1.0: the critical lr says "< 0.01", stable lr 0.1.
    recs = [record(BASE, lr, [lr == 0.1] * 4, diverged=[lr >= 1.0] * 4) for lr in LRS]
    arm = claims.Arm(recs)
    assert claims.METRICS["stable_lr"].values(arm, None)[0].tolist() == [0.1] * 4
    s = arm.summary()
    assert s["stable_lr"] == 0.1 and s["diverged"] == [0, 0, 4] and s["collapsed"] == [4, 0, 0]


def test_a_directional_claim_whose_effect_is_excluded_is_not_supported():
    # The variant is a little faster (x0.88 [0.74, 1.03]): the claimed 1.25x slowdown is excluded, but a
    # speed-up beyond 1.25x is not, so this is "not supported", not "inconclusive" and not "no effect"; 94% of
    # the resamples of seeds exclude the slowdown too.
    rng = np.random.default_rng(8)
    base = [record(BASE, lr, [True] * 16, steps=list(rng.uniform(50, 150, 16).round())) for lr in LRS]
    cure = [record(CURE, lr, [True] * 16, steps=list(rng.uniform(45, 140, 16).round())) for lr in LRS]
    v = claims.verdicts(one({"expect": "worse", "metric": "steps_to_converge"}), base + cure)[0]
    q = v["comparisons"][0]["questions"]["trainability"]
    assert q["ci"][1] < 1.25 and q["ci"][0] < 0.8 and not claims.fragile(q)
    assert q["verdict"] == claims.NOT_SUPPORTED and v["verdict"] == claims.NOT_SUPPORTED


def test_a_bound_open_on_the_claimed_side_is_never_no_effect():
    result = {"p": 0.5, "p_adjusted": 0.5, "effect_raw": 0.0, "ci_raw": [-0.1, 0.1], "bound": "≥", "note": None}
    assert claims.judge(result, +1, math.log(1.25)) == claims.INCONCLUSIVE
    assert claims.judge({**result, "bound": ""}, +1, math.log(1.25)) == claims.NO_EFFECT
    assert claims.judge(result, -1, math.log(1.25)) == claims.NOT_SUPPORTED  # open the other way only


def test_descriptive_answers_never_change_a_verdict():
    base, cure = grid(BASE, 0.1), grid(CURE, 1.0)
    tables = one({"expect": "better"})
    before = claims.verdicts(tables, base + cure)[0]
    for r in cure:  # the variant now explodes at init on every seed: a descriptive answer only
        r["explosion"]["per_seed"]["e2e_ratio"] = [[1e6, 1.0, 1.0, 1.0]] * 16
    after = claims.verdicts(tables, base + cure)[0]
    assert after["comparisons"][0]["questions"]["init"]["verdict"] == claims.DESCRIPTIVE
    assert after["comparisons"][0]["questions"]["init"]["effect"] > 1e5
    assert after["verdict"] == before["verdict"] == claims.SUPPORTED
    assert "p_adjusted" not in after["comparisons"][0]["questions"]["init"]


def test_a_test_that_two_comparisons_share_is_counted_once():
    recs = grid(BASE, 0.1) + grid(CURE, 1.0)
    comp = {"experiment": "e", "baseline": BASE, "variant": CURE, "expect": "better"}
    tables = [{"id": "c", "judged_on": ["trainability"], "comparison": [{**comp, "regime": "a"}, {**comp, "regime": "b"}]}]
    v = claims.verdicts(tables, recs)[0]
    a, b = (c["questions"]["trainability"] for c in v["comparisons"])
    assert a["family"] == b["family"] == 1 and a["p_adjusted"] == b["p_adjusted"] == a["p"]


def test_identical_arms_leave_the_family():
    recs = grid(BASE, 0.1) + grid(CURE, 1.0)
    v = claims.verdicts(one({"expect": "better"}, ["init", "trainability"]), recs)[0]
    init, train = (v["comparisons"][0]["questions"][k] for k in ("init", "trainability"))
    assert init["identical"] and init["verdict"] == claims.NO_EFFECT and "p_adjusted" not in init
    assert train["family"] == 1


def judged(b, v):
    """A paired ratio comparison that claims the variant higher, judged at its own p (a family of one)."""
    result = {**stats.compare(b, v, log_scale=True, paired=True), "expected_sign": 1, "threshold": math.log(1.25)}
    result["p_adjusted"] = result["p"]
    return result, claims.judge(result, 1, math.log(1.25))


def test_a_decisive_answer_that_resampling_does_not_reproduce_is_fragile_and_set_aside():
    # 9 of 16 seeds 10x higher and 7 a little lower: decisive at p < 0.05 on these seeds, but far from every
    # resample of them agrees.
    rng = np.random.default_rng(0)
    b = rng.uniform(1, 2, 16)
    result, verdict = judged(b, b * np.where(np.arange(16) < 10, 10.0, 0.7))
    assert result["p"] < 0.05 and verdict == claims.SUPPORTED
    share = claims.stability(result, verdict, 1)
    assert 0.2 < share < claims.STABLE
    strong, verdict = judged(b, b * 10)
    assert claims.stability(strong, verdict, 1) == 1.0
    answer = {"verdict": claims.SUPPORTED, "stability": share}
    assert claims.fragile(answer)
    comparison = {"regime": "r", "experiment": "e", "judged": ["init"], "questions": {"init": answer}}
    verdict = claims._claim_verdict({"id": "c"}, [comparison])
    assert verdict["verdict"] == claims.INCONCLUSIVE and verdict["fragile"]


@pytest.mark.parametrize("seed, fragile", [(0, False), (3, True)])
def test_no_detectable_effect_at_the_edge_of_the_minimum_effect_is_fragile(seed, fragile):
    # A real effect of about x1.1 on 16 seeds: "no detectable effect" (the interval's upper end short of x1.25).
    # Seed 0's interval ends at 1.17 and every resample answers the same; seed 3's ends at 1.237, and about
    # half of the resamples reach past x1.25 (inconclusive): a rerun could answer otherwise, so no verdict
    # rests on it.
    rng = np.random.default_rng(seed)
    b = rng.uniform(1, 2, 16)
    result, verdict = judged(b, b * np.exp(rng.normal(math.log(1.12), 0.15, 16)))
    assert verdict == claims.NO_EFFECT
    answer = {"verdict": verdict, "stability": claims.stability(result, verdict, 1)}
    assert claims.fragile(answer) == fragile
    comparison = {"regime": "r", "experiment": "e", "judged": ["trainability"], "questions": {"trainability": answer}}
    verdict = claims._claim_verdict({"id": "c"}, [comparison])
    assert verdict["verdict"] == (claims.INCONCLUSIVE if fragile else claims.NO_EFFECT)
    assert bool(verdict["fragile"]) == fragile


CLAIM = """
[[claim]]
id = 1
comparison = [{{ experiment = "ci", baseline = {{ name = "none" }}, variant = {variant}, expect = "better"{extra} }}]
"""
BAD_CLAIMS = {
    "an arm against itself": ('{ name = "none" }', "", ["comparison[0].variant", "two different arms"]),
    "a rate without a learning rate": ('{ name = "clip_by_global_norm" }', ', questions = ["rate"]',
                                       ["comparison[0].lr", "stated learning rate"]),
    "a learning rate off the grid": ('{ name = "clip_by_global_norm" }', ", lr = 0.1",
                                     ["comparison[0].lr", "baseline arm's grid", "0.03, 0.3, 10", "variant in 'ci'"]),
}


@pytest.mark.parametrize("name", BAD_CLAIMS)
def test_a_claim_that_compares_nothing_or_the_wrong_thing_is_refused_in_one_line(tmp_path, name):
    import subprocess
    import sys
    from pathlib import Path

    variant, extra, words = BAD_CLAIMS[name]
    suite = Path(__file__).resolve().parent.parent / "bench" / "suites" / "ci.toml"
    path = tmp_path / "bad.toml"
    path.write_text(suite.read_text() + CLAIM.format(variant=variant, extra=extra))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and str(path) in proc.stderr, proc.stderr
    assert all(word in proc.stderr for word in words), proc.stderr
    assert not out.exists()


def test_the_report_counts_the_answers_a_perturbed_rerun_gives_differently(tmp_path):
    from bench.reports import replication

    tables = one({"expect": "better"}, ["init", "trainability"])
    judged = claims.verdicts(tables, grid(BASE, 0.1) + grid(CURE, 1.0))
    kept = replication.record(judged, [{}] * 6, 1e-6)
    assert [a["question"] for a in kept["answers"]] == ["init", "trainability"]
    first = replication.lines(_write(tmp_path, kept), judged)[0]
    assert "0 of 2 judged answers differ from these (0 of them marked fragile in one run or both), and 0 of 1 " \
        "claim verdicts" in first
    assert "effect lies inside this run's 95% interval in 2 of the 2 answers" in first
    # The rerun's trainability answer differs, its effect outside this run's interval [10, 10].
    kept["answers"][1].update(verdict=claims.INCONCLUSIVE, stability=0.5, effect=5.0, ci=[0.5, 12.0])
    kept["claims"][0]["verdict"] = claims.INCONCLUSIVE
    lines = replication.lines(_write(tmp_path, kept), judged)
    assert "1 of 2 judged answers differ from these (1 of them marked fragile in one run or both), and 1 of 1 " \
        "claim verdicts (1 in the verdict itself, 0 only in which regimes" in lines[0]
    assert "inside this run's 95% interval in 1 of the 2 answers" in lines[0]
    assert lines[1].endswith("trainability: supported here (x10 [10, 10], stability 1.00), inconclusive there "
                             "(x5 [0.5, 12], stability 0.50)")
    assert lines[2] == "  - claim c's verdict: supported here; inconclusive there"
    # The same label, fragile in the rerun only: listed, not counted as a differing answer.
    kept["answers"][1].update(verdict=claims.SUPPORTED, stability=0.6, effect=10.0, ci=[10.0, 10.0])
    lines = replication.lines(_write(tmp_path, kept), judged)
    assert "0 of 2 judged answers differ" in lines[0] and "1 more answer keeps its label but is fragile in one " \
        "run only" in lines[0] and "in 2 of the 2 answers" in lines[0]
    assert lines[1].endswith("trainability: supported in both, here (x10 [10, 10], stability 1.00), there "
                             "(x10 [10, 10], stability 0.60)")
    kept["claims"][0]["verdict"] = "depends: supported on init (x); contradicted on trainability (y)"
    judged[0]["verdict"] = "depends: supported on init (x)"
    lines = replication.lines(_write(tmp_path, kept), judged)
    assert "(0 in the verdict itself, 1 only in which regimes" in lines[0]


def _write(directory, kept):
    import json

    from bench.reports import replication

    (directory / replication.FILE).write_text(json.dumps(kept))
    return directory


def test_loss_scaling_judged_on_the_fraction_of_zero_gradient_entries():
    # The underflow experiment: float16 leaves about 2% of the entries exactly zero, loss scaling about 0.01%.
    rng = np.random.default_rng(0)
    base = grid(BASE, 10.0)  # every seed trains at every lr: the tuned lr is the grid's best held-out loss
    var = grid(CURE, 10.0)
    for records, centre in ((base, 0.02), (var, 1e-4)):
        for r in records:
            r["per_seed"]["grad_zero_fraction"] = list(centre * (1 + 0.1 * rng.standard_normal(16)))
    v = claims.verdicts(one({"expect": "better", "metric": "grad_zero_fraction"}), base + var)[0]
    q = v["comparisons"][0]["questions"]["trainability"]
    assert not q["log_scale"] and q["effect"] == pytest.approx(-0.02, abs=2e-3)  # a difference of fractions
    assert v["verdict"] == claims.SUPPORTED
    # the same fractions in both arms: no detectable effect, never a verdict from the minimum effect's floor
    for r, b in zip(var, base):
        r["per_seed"]["grad_zero_fraction"] = list(b["per_seed"]["grad_zero_fraction"])
    v = claims.verdicts(one({"expect": "better", "metric": "grad_zero_fraction"}), base + var)[0]
    assert v["verdict"] != claims.SUPPORTED


def test_faster_is_asked_of_each_arm_at_its_own_best_learning_rate_for_convergence():
    # The baseline reaches the target on 4 of 16 seeds at lr 0.01 and on all 16 at 0.1 (in 100 steps); the
    # variant on all 16 at 1.0 in 40 steps, and its lowest validation loss (the tuned lr) is at 0.01 where it
    # never converges: at the tuned lr "faster?" would compare never with never.
    rng = np.random.default_rng(1)
    never = [None] * 16
    base = [record(BASE, 0.01, [True] * 16, steps=[150] * 4 + [None] * 12),
            record(BASE, 0.1, [True] * 16, steps=list(100 + rng.integers(0, 10, 16))),
            record(BASE, 1.0, [False] * 16)]
    cure = [record(CURE, 0.01, [True] * 16, steps=never, validation=[0.1] * 16),
            record(CURE, 0.1, [True] * 16, steps=[60] * 8 + [None] * 8),
            record(CURE, 1.0, [True] * 16, steps=list(40 + rng.integers(0, 10, 16)))]
    arm = claims.Arm(cure)
    assert arm.lrs[arm.tuned_index()] == 0.01 and arm.lrs[arm.fastest_index()] == 1.0
    assert arm.summary()["fastest_lr"] == 1.0 and arm.summary()["fastest_converged"] == 16
    v = claims.verdicts(one({"expect": "better", "metric": "steps_at_fastest_lr"}), base + cure)[0]
    q = v["comparisons"][0]["questions"]["trainability"]
    assert q["median"][0] >= 100 and q["median"][1] < 50 and q["p"] == pytest.approx(2 / 2 ** 16)
    assert v["verdict"] == claims.SUPPORTED
    at_tuned = claims.verdicts(one({"expect": "better", "metric": "steps_to_converge"}), base + cure)[0]
    assert at_tuned["verdict"] != claims.SUPPORTED


def test_arms_on_different_grids_are_read_at_initialisation_each_at_its_own_lowest_rate():
    # A variant swept over its own grid (the clip experiment starts a decade above the baseline): the gradient
    # at initialisation does not depend on the learning rate, so neither arm needs the other's lowest rate.
    base = grid(BASE, 1.0, e2e_init=[30.0] * 16)
    var = [record(CURE, lr, [lr < 10.0] * 16, e2e_init=[30.0] * 16) for lr in (0.1, 1.0, 10.0)]
    v = claims.verdicts(one({"expect": "better"}, ["init", "trainability"]), base + var)[0]
    q = v["comparisons"][0]["questions"]
    assert q["init"]["median"] == [30.0, 30.0] and q["trainability"]["median"] == [0.1, 1.0]


def test_training_is_read_at_the_same_learning_rates_in_both_arms_whatever_the_loss_curve():
    # The variant's grid starts a decade higher: the rates both grids hold are 0.1 and 1.0. Per seed, the ratio
    # in training is the median over those (geometric: sqrt(10 x 40) = 20 and sqrt(2 x 8) = 4), never read at a
    # tuned rate that a flat validation curve can move from one grid point to another.
    def arm(mitigation, lrs, mids, validations):
        return [record(mitigation, lr, [True] * 16, e2e_mid=[m] * 16, validation=[v] * 16)
                for lr, m, v in zip(lrs, mids, validations)]
    questions = []
    for validations in ((0.30, 0.31, 0.32), (0.32, 0.31, 0.30)):  # the lowest validation loss at either end
        recs = arm(BASE, LRS, (1000.0, 10.0, 40.0), validations) + \
            arm(CURE, (0.1, 1.0, 10.0), (2.0, 8.0, 1000.0), validations)
        q = claims.verdicts(one({"expect": "better"}, ["training"]), recs)[0]["comparisons"][0]["questions"]
        questions.append(q["training"])
    for q in questions:
        assert q["median"] == [pytest.approx(20.0), pytest.approx(4.0)]
        assert "median over the 2 learning rates of both grids where neither arm diverged (16 of 16 seeds)" in q["what"]
    assert questions[0]["p"] == questions[1]["p"] and questions[0]["verdict"] == claims.SUPPORTED
    # a run that diverged is left out, in both arms: at 1.0 the variant diverges, so only 0.1 is read
    recs[4]["per_seed"]["diverged"] = [True] * 16
    q = claims.verdicts(one({"expect": "better"}, ["training"]), recs)[0]["comparisons"][0]["questions"]
    assert q["training"]["median"] == [pytest.approx(10.0), pytest.approx(2.0)]
    for r in recs[3:5]:  # the variant diverges at both shared rates: nothing to read
        r["per_seed"]["diverged"] = [True] * 16
    q = claims.verdicts(one({"expect": "better"}, ["training"]), recs)[0]["comparisons"][0]["questions"]
    assert q["training"]["verdict"] == claims.INCONCLUSIVE and "(0 of 16 seeds)" in q["training"]["what"]
    assert q["training"]["note"] == "no learning rate at which both arms ran without diverging"


def test_tuned_quality_is_each_seeds_own_best_learning_rate():
    # Seeds 0-7 have their lowest validation loss at lr 0.01, seeds 8-15 at 1.0; the held-out loss of a seed
    # is read at its own tuned rate (0.2 and 0.4), not every seed at one rate chosen by the arm's median.
    half = [True] * 8 + [False] * 8
    recs = [record(BASE, lr, [True] * 16, validation=[0.1 if lr == (0.01 if h else 1.0) else 0.5 for h in half],
                   heldout=[0.2 if lr == 0.01 else 0.4 if lr == 1.0 else 0.9] * 16) for lr in LRS]
    arm = claims.Arm(recs)
    np.testing.assert_array_equal(arm.lrs[arm.seed_tuned()], [0.01] * 8 + [1.0] * 8)
    values, _ = claims.METRICS["tuned_heldout_loss"].values(arm, None)
    np.testing.assert_array_equal(values, [0.2] * 8 + [0.4] * 8)
    np.testing.assert_array_equal(claims.METRICS["tuned_heldout_loss"].values(arm, 0.1)[0], [0.9] * 16)


def test_datasets_are_strata_ranked_within_and_weighing_the_same():
    # One dataset's differences are 100 times the other's: pooled ranks let it decide alone (its one negative
    # difference gets the top rank); ranked within each dataset, both weigh the same.
    import itertools

    d = np.array([100.0, 200.0, 300.0, -400.0, 1.0, 2.0, 3.0, 4.0])
    strata = np.array([0] * 4 + [1] * 4)
    p, test = stats.signed_rank_p(d, strata)
    ranks = np.array([1, 2, 3, 4] * 2, float)
    observed = abs(np.sum(np.sign(d) * ranks))
    null = [abs(np.dot(signs, ranks)) for signs in itertools.product((1, -1), repeat=8)]
    assert test == "stratified signed-rank (2 strata), exact" and p == pytest.approx(np.mean(np.array(null) >= observed))
    assert p != pytest.approx(stats.signed_rank_p(d)[0])

