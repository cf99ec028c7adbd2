"""What compare and export read from a results file, checked at the boundary (one line naming the file, the
record and the key, and what is allowed; the command exits 2).

The engine always times a program and always records its yardsticks, so a throughput or yardstick that is
NaN, infinite, 0 or negative is a damaged record: refused, never judged and never exported. NaN or infinite
per-seed values (losses, gradient ratios) are data and pass.
"""
from __future__ import annotations

import json
import math
from pathlib import Path


class BadRecord(ValueError):
    """A record compare or export cannot use: the message names the file, the record and the key (exit 2)."""


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _positive(x) -> bool:
    return _number(x) and math.isfinite(x) and x > 0


def results_file(path) -> Path:
    """The results file a path names (a run directory's results.jsonl, or the file itself)."""
    from bench.records.store import RESULTS_FILE

    path = Path(path)
    return path / RESULTS_FILE if path.is_dir() else path


def check(records: list[dict], file, per_seed_keys=("diverged",), summaries: bool = False) -> list[dict]:
    """The records, once each, after checking what compare and export read; BadRecord (one line naming
    `file`, the record and the key, and what is allowed) otherwise.

    Per record: per_seed.diverged a list of true/false (one per seed); every other per-seed list compare
    reads as long, of numbers, null or "inf"; throughput.steps_per_s (and the chunk and CPU-time rates, the
    env's yardsticks where present) finite and above 0: the engine always times a program, so a NaN, 0 or
    negative rate is a damaged record, refused rather than judged. Two records of one cell_id must be equal
    (then one is kept); two different ones are refused.
    """
    seen: dict[str, tuple[int, dict]] = {}
    out = []
    for number, r in enumerate(records, 1):
        where = f"{file}: record {number} (cell {r.get('cell_id')})"

        def bad(key, value, allowed):
            shown = json.dumps(value, allow_nan=True) if not isinstance(value, str) else repr(value)
            return BadRecord(f"{where}: {key}: {shown[:60]}; allowed: {allowed}")

        for key in ("suite", "experiment", "label", "cell_id"):
            if not isinstance(r.get(key), str):
                raise bad(key, r.get(key), "a string")
        ps = r.get("per_seed")
        if not isinstance(ps, dict):
            raise bad("per_seed", ps, "an object of per-seed lists")
        diverged = ps.get("diverged", "(missing)")
        if not isinstance(diverged, list) or not diverged or not all(isinstance(d, bool) for d in diverged):
            raise bad("per_seed.diverged", diverged, "a non-empty list of true/false, one per seed")
        for key in per_seed_keys:
            if key == "diverged" or key not in ps:
                continue
            values = ps[key]
            kinds = (bool,) if key == "trained" else ()
            if not isinstance(values, list) or len(values) != len(diverged) or not all(
                    isinstance(v, kinds) if kinds else (v is None or _number(v) or v in ("inf", "-inf"))
                    for v in values):
                raise bad(f"per_seed.{key}", values, f"a list of {len(diverged)} "
                          + ("true/false" if kinds else "numbers, null or \"inf\"") + " (one per seed)")
        t = r.get("throughput")
        if not isinstance(t, dict):
            raise bad("throughput", t, "an object with steps_per_s")
        if not _positive(t.get("steps_per_s")):
            raise bad("throughput.steps_per_s", t.get("steps_per_s", "(missing)"), "a finite number above 0")
        for key in ("chunk_steps_per_s", "chunk_cpu_steps_per_s"):
            if t.get(key) is not None and (not isinstance(t[key], list) or not all(map(_positive, t[key]))):
                raise bad(f"throughput.{key}", t[key], "a list of finite numbers above 0")
        if t.get("cpu_steps_per_s") is not None and not _positive(t["cpu_steps_per_s"]):
            raise bad("throughput.cpu_steps_per_s", t["cpu_steps_per_s"], "a finite number above 0, or null")
        iqr = t.get("steps_per_s_iqr")
        if iqr is not None and (not isinstance(iqr, list) or len(iqr) != 2 or not all(map(_positive, iqr))):
            raise bad("throughput.steps_per_s_iqr", iqr, "two finite numbers above 0")
        env = r.get("env")
        if not isinstance(env, dict):
            raise bad("env", env, "an object (the environment block)")
        if summaries:
            _check_summaries(r, bad)
        for key in ("scan_flops_per_s", "matmul_flops_per_s"):
            if env.get(key) is not None and not _positive(env[key]):
                raise bad(f"env.{key}", env[key], "a finite number above 0, or null")
        cid = r["cell_id"]
        if cid in seen:
            if json.dumps(seen[cid][1], sort_keys=True) != json.dumps(r, sort_keys=True):
                raise BadRecord(f"{file}: records {seen[cid][0]} and {number}: cell_id {cid}: two different "
                                "records of one cell; allowed: one record per cell (keep the one you mean)")
            continue
        seen[cid] = (number, r)
        out.append(r)
    return out


def _check_summaries(r: dict, bad) -> None:
    """The per-cell keys the exports read (see `check`)."""
    rate = r.get("divergence_rate", "(missing)")
    if not _number(rate) or not 0 <= rate <= 1:
        raise bad("divergence_rate", rate, "a number from 0 to 1")
    ci = r.get("divergence_rate_ci", "(missing)")
    if not isinstance(ci, list) or len(ci) != 2 or not all(_number(v) and 0 <= v <= 1 for v in ci):
        raise bad("divergence_rate_ci", ci, "two numbers from 0 to 1")
    if type(r.get("converged")) is not int:
        raise bad("converged", r.get("converged", "(missing)"), "an integer (seeds that converged)")
    median = r.get("median_steps_to_converge", "(missing)")
    if median is not None and not (_number(median) and math.isfinite(median)):
        raise bad("median_steps_to_converge", median, "a finite number, or null (fewer than half converged)")
    ci = r.get("steps_to_converge_ci", "(missing)")
    if not isinstance(ci, list) or len(ci) != 2 or not all(v is None or _number(v) for v in ci):
        raise bad("steps_to_converge_ci", ci, "two numbers or nulls")
    steps = r.get("config", {}).get("steps", "(missing)") if isinstance(r.get("config"), dict) else "(missing)"
    if type(steps) is not int or steps < 1:
        raise bad("config.steps", steps, "an integer >= 1")
    if not isinstance(r["env"].get("timestamp"), str):
        raise bad("env.timestamp", r["env"].get("timestamp", "(missing)"), "an ISO 8601 string")
