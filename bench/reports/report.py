"""Results directory -> Markdown report with plots (verdicts first, then the evidence per claim).

The text is a pure function of the directory's records and suite.json, so a
committed report can be checked against the raw results it came from.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from gradbench.analysis import claims as claims_lib
from gradbench.records.store import read_results, read_suite
from gradbench.reports import drawing, verdicts
from gradbench.reports.figures import plot_jobs
from gradbench.reports.tables import arms_table, cells_table


def environment_line(records: list[dict]) -> str:
    """Package and library versions, machine, commit and time span of the records (of one environment)."""
    env = records[0]["env"]
    v = env["versions"]
    stamps = sorted(r["env"]["timestamp"] for r in records)
    commit = (env["git_commit"] or "unknown")[:10] + (" (dirty)" if env["git_dirty"] else "")
    package = (f"gradbench {env.get('package_version') or 'unknown'} (code sha256 {env['code_sha256'][:12]}), "
               if env.get("code_sha256") else "")
    machine = (f"; CPU {env['cpu']}" + (f" x{env['cpu_count']}" if env.get("cpu_count") else "")
               if env.get("cpu") else "") + \
        "".join(f", {k} {val}" for k, val in (env.get("cuda") or {}).items()) + \
        "".join(f", {k} {val}" for k, val in (env.get("jax_plugins") or {}).items())
    precision = (f"; matmul precision {env['default_matmul_precision']}"
                 if env.get("default_matmul_precision") else "")
    return (f"{package}jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, optax {v['optax']}, "
            f"numpy {v['numpy']}, Python {env['python']}; backend {env['backend']} ({env['device_kind']} "
            f"x{env['device_count']}){machine}{precision}; XLA_FLAGS '{env['xla_flags']}'; commit {commit}; "
            f"run {stamps[0]} to {stamps[-1]}")


def _env_key(env: dict) -> str:
    measured = ("timestamp", "matmul_flops_per_s", "scan_flops_per_s")  # of the run, not of the environment
    return json.dumps({k: v for k, v in env.items() if k not in measured}, sort_keys=True)


def environments(records: list[dict]) -> dict[str, list[dict]]:
    """The distinct environments among the records, named E1, E2, ... (E1 the most common) -> their records."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(_env_key(r["env"]), []).append(r)
    ranked = sorted(groups.values(), key=len, reverse=True)
    return {f"E{i + 1}": recs for i, recs in enumerate(ranked)}


def environment_lines(records: list[dict], names: dict[str, str]) -> list[str]:
    """`Environment: ...`, or one line per environment when the records come from several."""
    shown: dict[str, list[dict]] = {}
    for r in records:
        shown.setdefault(names[r["cell_id"]], []).append(r)
    if len(shown) == 1 and len(set(names.values())) == 1:
        return [f"Environment: {environment_line(records)}"]
    return ["Environments (rows marked [E2], [E3], ... come from another environment than E1):", ""] + \
        [f"- {name} ({len(recs)} records): {environment_line(recs)}" for name, recs in sorted(shown.items())]


def _judge(suite: dict, records: list[dict]) -> list:
    if not suite["claims"]:
        return []
    return claims_lib.verdicts(suite["claims"], records, min_effect=suite["settings"].get("min_effect", 1.25))


def judge(results_dir) -> list:
    """The verdicts of a results directory's claims (its suite.json and records), as its report gives them; a
    caller that shows them too passes them to `write` so they are judged once."""
    return _judge(read_suite(results_dir), read_results(results_dir))


def render(results_dir, output, judged: list | None = None) -> tuple[str, dict]:
    """The report's Markdown text for `output`, and the plots it links (path -> job); `judged`: the directory's
    verdicts if already judged (`judge`)."""
    results_dir, output = Path(results_dir), Path(output)
    suite = read_suite(results_dir)
    records = read_results(results_dir)
    plot_dir = results_dir / "plots"
    link = lambda p: os.path.relpath(p, output.parent)  # noqa: E731
    shown = link(results_dir)  # paths as seen from the report, so the text does not depend on the cwd
    command = reproduce_command(suite, results_dir, output)
    env_names = {r["cell_id"]: name for name, recs in environments(records).items() for r in recs}
    marks = {cid: name for cid, name in env_names.items() if name != "E1"}
    by_experiment: dict[str, list] = {}
    for r in records:
        by_experiment.setdefault(r["experiment"], []).append(r)
    jobs: dict = {}
    figures = {}
    for experiment, recs in by_experiment.items():
        exp_jobs = plot_jobs(experiment, recs, plot_dir)
        jobs.update(exp_jobs)
        figures[experiment] = [line for p, job in exp_jobs.items()
                               for line in (f"![{Path(p).stem}]({link(p)})", "", f"*{job[3]}*", "")]

    out = [f"# Results: {suite['name']}", "",
           f"Generated by `gradbench report {shown}` from `{shown}/results.jsonl`; "
           "do not edit by hand.", "", f"Reproduce (paths relative to the directory of this report): `{command}`",
           "", *environment_lines(records, env_names), "", *plugin_lines(suite)]
    settings = suite["settings"]
    min_effect = settings.get("min_effect", 1.25)
    t = records[0]["thresholds"]
    judged = _judge(suite, records) if judged is None else judged
    if judged:
        text, forest = verdicts.sections(judged, by_experiment, t, min_effect, plot_dir, link)
        out += text
        jobs.update(forest)
        out += ["## Appendix: experiments", "", "Each experiment once: every arm over its grid, every cell, "
                "the figures.", ""]
    for experiment, recs in by_experiment.items():
        level = "###" if judged else "##"
        out += [f"{level} Experiment: {experiment}", "", "<details><summary>its arms, every cell and its "
                "figures</summary>", "", *arms_table(recs), "", *cells_table(recs, marks), "",
                *figures[experiment], "</details>", ""]
        if len(environments(records)) > 1:
            out += [*environment_lines(recs, env_names), ""]
    return "\n".join(out), jobs


def plugin_lines(suite: dict) -> list[str]:
    """`Plugins: ...` (each plugin the suite imported, as written, with its source's sha256), or nothing."""
    if not suite.get("plugins"):
        return []
    shown = ", ".join(f"`{p['module']}` ({p['name']}, source sha256 {p['sha256'][:12]})" for p in suite["plugins"])
    return [f"Plugins (their source joins the code hash and the identity of the cells that use them): {shown}", ""]


def reproduce_command(suite: dict, results_dir: Path, output: Path) -> str:
    """The exact `bench run` command, seeds and steps as run, paths relative to the report's directory."""
    where = suite.get("suite_from_out")
    if where and not os.path.isabs(where):
        suite_path = os.path.relpath(results_dir / where, output.parent)
    else:
        suite_path = where or suite["path"]  # older suite.json: the path as given on the command line
    settings, experiments = suite["settings"], suite.get("experiments") or []
    # --seeds/--steps set every experiment's: given only where every experiment ran with the suite's value
    # (as after such an override); a suite whose experiments set their own reruns as it is.
    flags = "".join(f" --{key} {settings[key]}" for key in ("seeds", "steps") if settings.get(key)
                    and all(e.get(key, settings[key]) == settings[key] for e in experiments))
    return f"gradbench run {suite_path}{flags} --out {os.path.relpath(results_dir, output.parent)}"


def _glance_span(lines: list[str]) -> tuple[int, int] | None:
    """Where a report's "Answers at a glance" section starts and ends (lines), if it has one."""
    if verdicts.GLANCE not in lines:
        return None
    start = lines.index(verdicts.GLANCE)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return start, end


def render_all(results_dirs: list, output, judged: list | None = None) -> tuple[str, dict]:
    """The report of the first directory, then each further one as a section "Beyond the article: NAME"; the
    further ones' claims join the first page's "Answers at a glance" table (one row per claim, linked to its
    section) instead of a table of their own."""
    text, jobs = render(results_dirs[0], output, judged)
    lines = text.splitlines()
    for extra in results_dirs[1:]:
        more, more_jobs = render(extra, output)
        more_lines = more.splitlines()
        main, theirs = _glance_span(lines), _glance_span(more_lines)
        title = more_lines[0].removeprefix("# Results: ")
        heading = f"Beyond the article: {title}"
        if main and theirs:
            last_row = max(i for i in range(*main) if lines[i].startswith("| ["))
            source = os.path.relpath(extra, Path(output).parent)
            lines[last_row + 1:last_row + 1] = [
                f"| *{heading}: another run (`{source}`), its environment and seeds in "
                f"[its section]({verdicts.anchor(heading)})* | | | |",
                *[line for line in more_lines[slice(*theirs)] if line.startswith("| [")]]
            del more_lines[slice(*theirs)]
        demoted = ["#" + line if line.startswith("#") else line for line in more_lines[1:]]
        lines += ["", f"## {heading}", *demoted]
        jobs.update(more_jobs)
    return "\n".join(lines), jobs


def write(results_dir, output=None, also=(), judged: list | None = None) -> Path:
    """Writes the report (default DIR/REPORT.md) and its plots; returns the report's path.

    `also`: further results directories, appended as sections "Beyond the article: NAME"; `judged`: the first
    directory's verdicts if already judged (`judge`). Each directory's
    plots/ holds its report's figures: a figure the report no longer draws (of an experiment the results no
    longer hold) is removed.
    """
    from gradbench.records.store import atomic_write

    output = Path(output or Path(results_dir) / "REPORT.md")
    text, jobs = render_all([results_dir, *also], output, judged)
    for directory in (results_dir, *also):
        Path(directory, "plots").mkdir(parents=True, exist_ok=True)
    drawing.draw(jobs)
    drawn = {Path(path).resolve() for path in jobs}
    for directory in (results_dir, *also):
        for stale in Path(directory, "plots").glob("*.png"):
            if stale.resolve() not in drawn:
                stale.unlink()
    atomic_write(output, text + "\n")
    return output
