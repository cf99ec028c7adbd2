"""Two runs of one suite -> per cell and metric: worse, better or unchanged (`gradbench compare`).

Records are paired by cell_id. Rates (divergence, and failure to train where
records carry `per_seed.trained`) get Fisher's exact test on the seed counts;
per-seed values get a Mann-Whitney test (exact when there are no ties and
both sides have at most EXACT_MAX seeds, else a permutation test on the
pooled ranks, PERMUTATIONS resamples, fixed seed), with a seed that diverged
or never got a value ranked last. Test names in the output: Fisher, MW exact,
MW permutation. Every p-value of the comparison is Holm-corrected
(family-wise error) over all cells x metrics. Throughput (steps/s) is a ratio:
each side's steps/s divided by its run's yardstick (env.scan_flops_per_s,
else env.matmul_flops_per_s, timed in the run's process), worse only below
both the threshold and the noise band that the two runs' timed chunks span;
on a CPU backend the steps per second of the process's CPU time must be worse
too (a loaded machine slows the wall clock, not the CPU time a step costs).
`detectable` gives, per metric, the smallest effect in one cell that the
comparison can find with its seeds and tests.

The comparison leads with the environment: every difference between the two
runs' env blocks (library versions, Python, backend, devices, CPU model, XLA
flags, code hash). Throughput measured on other machines (another CPU model or
core count, backend, device kind or count) is reported, not judged, unless
asked (`judge_across_machines`): neither yardstick nor CPU time carries a
step's cost from one CPU model to another. Records are checked as they are
read (`load`, against gradbench.records.validate): a record compare cannot judge
is refused with one line naming the file, the line and the key.
"""
from __future__ import annotations

import json
import math

import numpy as np
from scipy import stats

from gradbench.analysis.stats import holm

ALPHA = 0.05
THROUGHPUT_THRESHOLD = 0.8  # current / baseline steps/s below this is worse (above 1 / this: better)
EXACT_MAX = 20  # seeds per side up to which an untied Mann-Whitney test is exact
PERMUTATIONS = 9999
WORSE, BETTER, UNCHANGED, UNTESTED = "worse", "better", "unchanged", "untested"
ORDER = {WORSE: 0, BETTER: 1, UNCHANGED: 2, UNTESTED: 3}


# The environment, in the order compare lists its differences: (key in env, what it is called).
ENV_KEYS = (
    ("versions.jax", "jax"), ("versions.jaxlib", "jaxlib"), ("versions.flax", "flax"), ("versions.optax", "optax"),
    ("versions.numpy", "numpy"), ("versions.scipy", "scipy"), ("python", "Python"), ("jax_plugins", "jax plugins"),
    ("cuda", "CUDA"), ("backend", "backend"), ("device_kind", "device kind"), ("device_count", "device count"),
    ("platform_version", "platform version"), ("cpu", "CPU model"), ("cpu_count", "CPU cores"),
    ("platform", "OS"), ("xla_flags", "XLA flags"), ("default_matmul_precision", "matmul precision"),
    ("code_sha256", "code sha256"), ("package_version", "gradbench"), ("git_commit", "commit"),
    ("git_dirty", "uncommitted changes"),
)
CODE_KEYS = {"code_sha256", "package_version", "git_commit", "git_dirty"}  # the change under test, not the environment
INFO_KEYS = {"platform"}  # listed, never an environment change: a runner's kernel build moves between identical VMs
MACHINE_KEYS = ("backend", "device_kind", "device_count", "cpu", "cpu_count")  # another machine: throughput not judged
HASHES = {"code_sha256", "git_commit"}  # shown by their first 12 characters


def _env_value(env: dict, key: str):
    for part in key.split("."):
        env = env.get(part) if isinstance(env, dict) else None
    return env


def _show(key: str, value) -> str:
    if value is None:
        return "(not recorded)"
    if key in HASHES and isinstance(value, str):
        return value[:12]
    if key == "xla_flags":
        return repr(value)
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def environment_differences(baseline: list[dict], current: list[dict]) -> list[dict]:
    """Every env key (ENV_KEYS) whose values differ between the two runs, each side's distinct values listed
    (a merged run may hold several); `kind`: "machine", "code" or "environment"."""
    out = []
    for key, name in ENV_KEYS:
        sides = []
        for records in (baseline, current):
            values = {json.dumps(_env_value(r["env"], key), sort_keys=True) for r in records}
            sides.append([json.loads(v) for v in sorted(values)])
        if sides[0] != sides[1]:
            kind = ("machine" if key in MACHINE_KEYS else "code" if key in CODE_KEYS else "info" if key in INFO_KEYS
                    else "environment")
            out.append({"key": key, "name": name, "kind": kind,
                        "baseline": " or ".join(_show(key, v) for v in sides[0]),
                        "current": " or ".join(_show(key, v) for v in sides[1])})
    return out


def environment_lines(result: dict) -> list[str]:
    """The environment block: one line per difference, then whether throughput was judged."""
    diffs = result["environment"]["differences"]
    if not diffs:
        lines = ["environment: the same (library versions, Python, backend and devices, CPU, XLA flags, code)"]
    else:
        lines = [f"environment: {len(diffs)} difference{'s' if len(diffs) > 1 else ''} (baseline -> current)"]
        lines += [f"  {d['name']}: {d['baseline']} -> {d['current']}"
                  + (" (the code under test)" if d["kind"] == "code" else "") for d in diffs]
    machine = [d["name"] for d in diffs if d["kind"] == "machine"]
    names = f"{', '.join(machine[:-1])} and {machine[-1]}" if len(machine) > 1 else "".join(machine)
    what = f"the {names} differ{'s' if len(machine) == 1 else ''}"
    if machine and not result["environment"]["throughput_judged"]:
        lines.append(f"throughput was not judged across machines ({what}): its ratios are reported only "
                     "(--judge-throughput-across-machines judges them)")
    elif machine:
        lines.append(f"throughput judged across machines ({what}), as asked")
    changed = ", ".join(d["name"] for d in diffs if d["kind"] in ("machine", "environment"))
    if changed and result["environment"]["fail_on_env_change"]:
        lines.append(f"ENVIRONMENT CHANGED ({changed}): failing, as --fail-on-env-change asks")
    return lines


def load(path) -> list[dict]:
    """The records of a results file or run directory (any schema compare reads: gradbench.records.validate.CORE
    declares what compare reads of them); StoreError (a ValueError, one line naming the file, line and key)."""
    from gradbench.records import store

    return store.read_results(path, oldest=1)


def _diverged(record):
    return [bool(d) for d in record["per_seed"]["diverged"]]


def _failed(record):
    trained = record["per_seed"].get("trained")
    return None if trained is None else [not t for t in trained]


def _ranked_last(key, worst):
    """Per-seed values of `key`; a diverged seed or a missing value counts as `worst` (ranked last)."""
    def values(record):
        ps = record["per_seed"]
        if key not in ps:
            return None
        return [worst if d or v is None or math.isnan(float(v)) else float(v) for v, d in zip(ps[key], ps["diverged"])]
    return values


def _present(key):
    """Per-seed values of `key`, seeds without a value left out."""
    def values(record):
        vs = record["per_seed"].get(key)
        return None if vs is None else [float(v) for v in vs if v is not None and not math.isnan(float(v))]
    return values


# metric -> (record -> per-seed values or None when the record lacks it, kind, which direction is worse)
METRICS = {
    "divergence_rate": (_diverged, "rate", "higher"),
    "failure_rate": (_failed, "rate", "higher"),
    "steps_to_converge": (_ranked_last("steps_to_converge", math.inf), "values", "higher"),
    "final_heldout_loss": (_ranked_last("final_heldout_loss", math.inf), "values", "higher"),
    "critical_lr": (_present("critical_lr"), "values", "lower"),
}
PER_SEED_KEYS = ("diverged", "trained", "steps_to_converge", "final_heldout_loss", "critical_lr")  # what METRICS read
# (validate.CORE declares each of them, so a record compare reads is checked before it is judged)


def rate_test(baseline: list[bool], current: list[bool]) -> dict:
    """Fisher's exact test (two-sided) on the counts of True; direction +1 when current's rate is higher."""
    kb, kc, nb, nc = sum(baseline), sum(current), len(baseline), len(current)
    p = float(stats.fisher_exact([[kc, nc - kc], [kb, nb - kb]]).pvalue)
    diff = kc / nc - kb / nb
    return {"p": p, "direction": int(np.sign(diff)), "test": "Fisher",
            "baseline": f"{kb}/{nb}", "current": f"{kc}/{nc}", "effect": f"{diff:+.2f}"}


def _median(x):
    return float(np.quantile(x, 0.5, method="lower"))  # defined with infinities (never converged)


def _fmt(x):
    return "never" if math.isinf(x) else f"{x:.4g}"


def rank_test(baseline: list[float], current: list[float]) -> dict:
    """Two-sided Mann-Whitney test; exact without ties and with small samples, else a permutation test on ranks."""
    b, c = np.asarray(baseline, float), np.asarray(current, float)
    pooled = np.concatenate([b, c])
    described = {"baseline": f"median {_fmt(_median(b))}", "current": f"median {_fmt(_median(c))}"}
    if np.all(pooled == pooled[0]):
        return {"p": 1.0, "direction": 0, "test": "all equal", "effect": "P(current > baseline) = 0.50", **described}
    ranks = stats.rankdata(pooled)  # midranks; infinities (never converged, diverged) tie for last
    u = float(ranks[len(b):].sum() - len(c) * (len(c) + 1) / 2)  # U of current
    superiority = u / (len(b) * len(c))
    if len(np.unique(pooled)) == len(pooled) and max(len(b), len(c)) <= EXACT_MAX:
        p, test = float(stats.mannwhitneyu(c, b, method="exact").pvalue), "MW exact"
    else:
        result = stats.permutation_test(
            (ranks[len(b):], ranks[:len(b)]), lambda x, y, axis: np.mean(x, axis=axis) - np.mean(y, axis=axis),
            vectorized=True, n_resamples=PERMUTATIONS, rng=np.random.default_rng(0))
        p, test = float(result.pvalue), "MW permutation"
    return {"p": p, "direction": int(np.sign(round(superiority - 0.5, 12))), "test": test,
            "effect": f"P(current > baseline) = {superiority:.2f}", **described}


def _spread(rates: list[float] | None, median: float) -> tuple[float, float]:
    """(lowest, highest) timed chunk's rate over the median: the run's own noise (the median alone: none)."""
    rates = rates or [median]
    return min(rates) / median, max(rates) / median


def _judge(ratio: float, base: tuple[float, float], cur: tuple[float, float], threshold: float) -> dict:
    """A ratio of rates against the threshold and the noise band that the two runs' chunk spreads give
    (current's slowest chunk over baseline's fastest, relative to their medians)."""
    band = (cur[0] / base[1], cur[1] / base[0])
    worse_below = min(threshold, band[0])
    better_above = max(1 / threshold, band[1]) if threshold > 0 else math.inf
    return {"ratio": ratio, "band": band, "worse_below": worse_below,
            "verdict": WORSE if ratio < worse_below else BETTER if ratio > better_above else UNCHANGED}


def throughput_row(base: dict, cur: dict, threshold: float, not_judged: str | None = None) -> dict:
    """Steps/s of current over baseline, each divided by its run's yardstick (`calibrate`: the scan's FLOP/s
    where both records hold it, else the matmul's), judged against the threshold and the two runs' noise band.

    On a CPU backend, where both records hold it, the CPU-time rate (program steps per second of the
    process's CPU time) is judged the same way, and throughput is worse (better) only when both say so: a
    machine that other jobs load slows the wall clock and the calibration unevenly, while the CPU time a step
    costs barely moves; code that does more work per step moves both. `not_judged`: why the ratio is
    reported only (another machine), or None.
    """
    tb, tc = base["throughput"], cur["throughput"]
    sb, sc = tb["steps_per_s"], tc["steps_per_s"]
    for yardstick in ("scan", "matmul"):
        fb, fc = base["env"].get(f"{yardstick}_flops_per_s"), cur["env"].get(f"{yardstick}_flops_per_s")
        if fb and fc:
            ratio, mode = (sc / fc) / (sb / fb), f"normalised by each run's {yardstick} FLOP/s"
            break
    else:
        ratio, mode = sc / sb, "raw (a side has no calibration)"
    wall = _judge(ratio, _spread(tb.get("chunk_steps_per_s") or tb.get("steps_per_s_iqr"), sb),
                  _spread(tc.get("chunk_steps_per_s") or tc.get("steps_per_s_iqr"), sc), threshold)
    test = (f"ratio vs x{wall['worse_below']:.2f} (threshold {threshold:g}, "
            f"noise band x{wall['band'][0]:.2f}-x{wall['band'][1]:.2f})")
    verdict, cpu = wall["verdict"], None
    cpu_b, cpu_c = tb.get("cpu_steps_per_s"), tc.get("cpu_steps_per_s")
    if cpu_b and cpu_c and base["env"].get("backend") == cur["env"].get("backend") == "cpu":
        cpu = _judge(cpu_c / cpu_b, _spread(tb.get("chunk_cpu_steps_per_s"), cpu_b),
                     _spread(tc.get("chunk_cpu_steps_per_s"), cpu_c), threshold)
        verdict = wall["verdict"] if cpu["verdict"] == wall["verdict"] else UNCHANGED
        test += (f"; CPU time x{cpu['ratio']:.2f} vs x{cpu['worse_below']:.2f} "
                 f"(noise band x{cpu['band'][0]:.2f}-x{cpu['band'][1]:.2f}); worse or better only when both are")
        mode += " and by the process's CPU time"
    rb, rc = tb.get("runs_per_program"), tc.get("runs_per_program")
    if rb != rc:  # steps/s is of the whole compiled program: other run counts are other programs
        verdict, test = UNTESTED, f"not comparable: {rb} vs {rc} runs per program"
    elif not_judged:
        verdict, test = UNTESTED, f"not judged: {not_judged}; {test}"
    return {"metric": "steps_per_s", "test": test, "p": None, "p_adjusted": None,
            "baseline": f"{sb:.4g}", "current": f"{sc:.4g}", "effect": f"x{ratio:.2f}", "ratio": ratio,
            "noise_band": list(wall["band"]), "worse_below": wall["worse_below"],
            "cpu_ratio": cpu and cpu["ratio"], "cpu_noise_band": cpu and list(cpu["band"]),
            "throughput": mode, "verdict": verdict}


def smallest_rate_rise(n_baseline: int, n_current: int, level: float) -> int | None:
    """The fewest of n_current seeds failing, against none of n_baseline, that Fisher's test finds at `level`."""
    for k in range(1, n_current + 1):
        if stats.fisher_exact([[k, n_current - k], [0, n_baseline]]).pvalue < level:
            return k
    return None


def smallest_superiority(n_baseline: int, n_current: int, level: float) -> float | None:
    """The smallest P(current > baseline) that the exact Mann-Whitney test finds at `level` (no ties)."""
    b = np.arange(n_baseline, dtype=float)
    for u in range(n_baseline * n_current // 2 + 1, n_baseline * n_current + 1):
        # current's values placed so that u (baseline, current) pairs have current above: U = u exactly.
        counts = np.minimum(n_baseline, (u // n_current) + (np.arange(n_current) < u % n_current))
        c = counts - 0.5 + np.arange(n_current) * 1e-6
        if stats.mannwhitneyu(c, b, method="exact").pvalue < level:
            return u / (n_baseline * n_current)
    return None


def detectable(rows: list[dict], seeds: tuple[int, int], alpha: float) -> dict[str, str]:
    """Per metric, the smallest effect this comparison can find for one cell with the fewest seeds (Holm's
    first step: p below alpha / tests)."""
    tests = sum(r["p"] is not None for r in rows)
    level = alpha / max(tests, 1)
    nb, nc = seeds
    out = {}
    metrics = {r["metric"] for r in rows}
    k = smallest_rate_rise(nb, nc, level)
    for metric in ("divergence_rate", "failure_rate"):
        if metric in metrics:
            out[metric] = f"0/{nb} -> {k}/{nc} (Fisher, p < {level:.2g})" if k else f"none with {nb} vs {nc} seeds"
    s = smallest_superiority(nb, nc, level)
    for metric in ("steps_to_converge", "final_heldout_loss", "critical_lr"):
        if metric in metrics:
            out[metric] = (f"P(current worse than baseline) >= {s:.2f} (MW exact, p < {level:.2g})" if s
                           else f"none with {nb} vs {nc} seeds")
    band = [r["worse_below"] for r in rows if r["metric"] == "steps_per_s" and r["verdict"] != UNTESTED]
    if band:
        out["steps_per_s"] = f"a ratio below x{max(band):.2f} (the least noisy cell; x{min(band):.2f} the noisiest)"
    return out


def compare(baseline: list[dict], current: list[dict], alpha: float = ALPHA,
            throughput_threshold: float = THROUGHPUT_THRESHOLD, judge_across_machines: bool = False,
            fail_on_env_change: bool = False) -> dict:
    """Every paired cell and metric tested and judged; raises ValueError when the runs are not of one suite.

    The result leads with `environment`: the differences of the two runs' env blocks, whether throughput was
    judged (not across machines unless `judge_across_machines`) and whether the environment (anything but
    the code) changed; `failed` is true when a cell regressed, or the environment changed and
    `fail_on_env_change` asks to fail on that.
    """
    suites = {side: sorted({r["suite"] for r in recs}) for side, recs in (("baseline", baseline), ("current", current))}
    if suites["baseline"] != suites["current"]:
        raise ValueError(f"different suites: baseline {', '.join(suites['baseline'])}, "
                         f"current {', '.join(suites['current'])}")
    base_by, cur_by = {r["cell_id"]: r for r in baseline}, {r["cell_id"]: r for r in current}
    paired = [cid for cid in base_by if cid in cur_by]
    if not paired:
        raise ValueError("no cell_id in common (different --seeds/--steps overrides or suite edits give new cells)")
    differences = environment_differences(baseline, current)
    machine = [d["name"] for d in differences if d["kind"] == "machine"]
    not_judged = f"another machine ({', '.join(machine)})" if machine and not judge_across_machines else None
    rows = []
    for cid in paired:
        b, c = base_by[cid], cur_by[cid]
        cell = {"cell_id": cid, "experiment": c["experiment"], "label": c["label"]}
        for metric, (values, kind, worse_if) in METRICS.items():
            vb, vc = values(b), values(c)
            if vb is None and vc is None:
                continue  # neither record has this metric
            if not vb or not vc:
                rows.append({**cell, "metric": metric, "test": "no data on one side", "p": None,
                             "p_adjusted": None, "baseline": "-" if not vb else str(len(vb)),
                             "current": "-" if not vc else str(len(vc)), "effect": "", "verdict": UNTESTED})
                continue
            result = rate_test(vb, vc) if kind == "rate" else rank_test(vb, vc)
            result["worse_direction"] = 1 if worse_if == "higher" else -1
            rows.append({**cell, "metric": metric, **result})
        rows.append({**cell, **throughput_row(b, c, throughput_threshold, not_judged)})
    tested = [r for r in rows if r["p"] is not None]
    for row, p_adj in zip(tested, holm([r["p"] for r in tested])):
        worse_direction = row.pop("worse_direction")
        row["p_adjusted"] = p_adj
        row["verdict"] = (UNCHANGED if p_adj >= alpha or row["direction"] == 0
                          else WORSE if row["direction"] == worse_direction else BETTER)
    # Worst first: verdict, then tests before throughput, then the smallest p (or ratio).
    rows.sort(key=lambda r: (ORDER[r["verdict"]], r["p"] is None,
                             r["p_adjusted"] if r["p"] is not None else r.get("ratio", 1.0)))
    regressed = list(dict.fromkeys(r["cell_id"] for r in rows if r["verdict"] == WORSE))
    modes = sorted({r["throughput"] for r in rows if "throughput" in r})
    seeds = [(len(base_by[c]["per_seed"]["diverged"]), len(cur_by[c]["per_seed"]["diverged"])) for c in paired]
    changed = any(d["kind"] in ("machine", "environment") for d in differences)
    return {
        "environment": {"differences": differences, "machine_changed": bool(machine),
                        "throughput_judged": not_judged is None, "changed": changed,
                        "fail_on_env_change": fail_on_env_change},
        "failed": bool(regressed) or (fail_on_env_change and changed),
        "detectable": detectable(rows, min(seeds), alpha),
        "detectable_seeds": list(min(seeds)),
        "alpha": alpha, "correction": f"Holm over {len(tested)} tests (cells x metrics)",
        "throughput_threshold": throughput_threshold, "throughput": modes,
        "paired": len(paired), "rows": rows, "regressed": regressed,
        "only_baseline": [{"cell_id": k, "experiment": r["experiment"], "label": r["label"]}
                          for k, r in base_by.items() if k not in cur_by],
        "only_current": [{"cell_id": k, "experiment": r["experiment"], "label": r["label"]}
                         for k, r in cur_by.items() if k not in base_by],
    }


def _p(x):
    return "-" if x is None else f"{x:.2g}"


def summary(result: dict) -> str:
    """One paragraph: what was compared, how, and what regressed."""
    names = {r["cell_id"]: f"{r['experiment']}: {r['label']}" for r in result["rows"]}
    regressed = "; ".join(names[c] for c in result["regressed"])
    env = result["environment"]
    throughput = (f"worse below x{result['throughput_threshold']:g} and its noise band, "
                  f"{' / '.join(result['throughput'])}" if env["throughput_judged"]
                  else "not judged across machines (reported only)")
    changed = " ENVIRONMENT CHANGED (--fail-on-env-change)." if env["changed"] and env["fail_on_env_change"] else ""
    return (f"{result['paired']} cells paired; {result['correction']}, alpha {result['alpha']:g}; throughput: "
            f"{throughput}. "
            + (f"REGRESSED: {len(result['regressed'])} cells ({regressed})." if regressed else "Nothing regressed.")
            + changed)


def detectable_lines(result: dict) -> list[str]:
    """One line per metric: the smallest effect a cell needs for this comparison to find it."""
    nb, nc = result["detectable_seeds"]
    return [f"smallest detectable regression per cell ({nb} vs {nc} seeds, Holm over the tests, alpha "
            f"{result['alpha']:g}):"] + [f"  {metric}: {text}" for metric, text in result["detectable"].items()]


def _shown(result: dict, show_all: bool) -> list[dict]:
    return [r for r in result["rows"] if show_all or r["verdict"] in (WORSE, BETTER)]


COLUMNS = ("verdict", "experiment", "cell", "metric", "baseline", "current", "effect", "test", "p", "p (Holm)")


def _cells(row: dict) -> list[str]:
    return [row["verdict"], row["experiment"], row["label"], row["metric"], row["baseline"], row["current"],
            row["effect"], row["test"], _p(row["p"]), _p(row["p_adjusted"])]


def one_side(result: dict) -> list[str]:
    """Lines naming the cells found on one side only."""
    return [f"only in {side} ({len(result[key])}): " + ", ".join(f"{c['experiment']}: {c['label']}"
                                                                  for c in result[key])
            for side, key in (("baseline", "only_baseline"), ("current", "only_current")) if result[key]]


def table(result: dict, show_all: bool = False):
    """A rich table, worst first (unchanged rows only with show_all; a line when nothing is shown)."""
    from rich.table import Table

    rows = _shown(result, show_all)
    hidden = len(result["rows"]) - len(rows)
    if not rows:
        untested = sum(r["verdict"] == UNTESTED for r in result["rows"])
        return f"all {hidden} cell-metrics unchanged" + (f" or not judged ({untested})" if untested else "")
    tbl = Table(title="compare: current vs baseline", caption=f"{hidden} cell-metrics unchanged or not judged "
                "(--all lists them)" if hidden else None)
    for column in COLUMNS:
        tbl.add_column(column, justify="right" if column in ("p", "p (Holm)") else "left")
    style = {WORSE: "bold red", BETTER: "green"}
    for row in rows:
        tbl.add_row(*_cells(row), style=style.get(row["verdict"]))
    return tbl


def markdown(result: dict, show_all: bool = False) -> str:
    """The comparison as a pull-request comment."""
    rows = _shown(result, show_all)
    hidden = len(result["rows"]) - len(rows)
    env = []
    for line in environment_lines(result):
        item = line.startswith("  ")
        if env and item != env[-1].startswith("- "):
            env.append("")  # a list apart from the lines around it
        env.append(f"- {line.strip()}" if item else f"{line}  ")
    lines = ["### gradbench compare", "", *env, "", summary(result), "",
             *[f"{line}  " for line in detectable_lines(result)], ""]
    if rows:
        lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in rows]
        lines.append("")
    if hidden:
        lines += [f"{hidden} cell-metrics unchanged or not judged.", ""]
    lines += [f"{line}  " for line in one_side(result)]
    return "\n".join(lines).rstrip() + "\n"

