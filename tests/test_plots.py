"""Report figures: every series of a plot can be told apart; figures drawn in worker processes are the files
drawn in one."""
import pytest

from gradbench.reports import drawing, plots


def test_series_styles_are_pairwise_distinct_beyond_ten_series():
    styles = plots.series_styles(25)
    assert len({(s["color"], s["linestyle"]) for s in styles}) == 25
    assert styles[0]["color"] == styles[10]["color"] and styles[0]["linestyle"] != styles[10]["linestyle"]


def test_gradient_profile_with_many_series_gives_each_its_own_legend_style(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    series = {f"variant {i}": ("layers", [[0.1 * i, 0.2 * i, None], [0.1 * i, "inf", 0.3 * i]]) for i in range(16)}
    plots.gradient_profile(series, tmp_path / "g.png", "sixteen variants")
    (ax,) = figures[0].axes
    legend = ax.get_legend()
    lines = legend.get_lines()
    assert [t.get_text() for t in legend.get_texts()] == list(series)
    assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == 16
    assert legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1  # beside the axes, over no data


def _cell(activation, depth, weight_var, failure_rate):
    e2e = weight_var ** (depth / 4)  # explodes with weight_var above 1, vanishes below, faster when deeper
    return {"label": f"{activation} d{depth} w{weight_var} lr=0.005", "failure_rate": failure_rate,
            "config": {"optimizer": {"lr": 0.005}, "task": {"name": "t", "n_train": 64},
                       "model": {"activation": activation, "depth": depth, "weight_var": weight_var}},
            "explosion": {"fractions": [0.0, 1.0], "per_seed": {"e2e_ratio": [[e2e, None], [e2e, "inf"]],
                                                               "growth_per_layer": [[1.0, None], [1.0, "inf"]]}}}


def test_a_two_factor_grid_is_drawn_as_maps_with_every_cell_annotated(tmp_path):
    from gradbench.reports import figures
    records = [_cell(a, d, w, 0.5 if w > 2 else 0.0)
               for a in ("tanh", "relu") for d in (6, 24) for w in (0.5, 1.0, 2.0, 4.0, 8.0)]
    factors = figures.grid_factors(records)
    assert factors == (("model", "depth"), ("model", "weight_var"), ("model", "activation"))
    jobs = figures.plot_jobs("phase", records, tmp_path)
    assert sorted(p.rsplit("/", 1)[1] for p in jobs) == ["phase-e2e-end-map.png", "phase-e2e-init-map.png",
                                                        "phase-failure-map.png"]  # no 20-line plots
    fn, panels, title, _ = jobs[str(tmp_path / "phase-e2e-init-map.png")]
    rows, cols, matrix = panels["activation tanh"]
    assert rows == [6, 24] and cols == [0.5, 1.0, 2.0, 4.0, 8.0] and matrix[1][4] == 8.0 ** 6
    fn(panels, tmp_path / "m.png", title)
    assert (tmp_path / "m.png").stat().st_size > 10_000
    # at several learning rates, or over one factor, an experiment keeps its curves against the learning rate
    assert figures.grid_factors([dict(r, config={**r["config"], "optimizer": {"lr": 0.005 * (i % 2 + 1)}})
                                 for i, r in enumerate(records)]) is None


def test_figures_drawn_in_worker_processes_are_the_files_drawn_in_one(tmp_path, monkeypatch):
    series = {f"arm {i}": [(lr, 0.1 * i, 0.0, 0.2 * i) for lr in (1e-3, 1e-2, 1e-1)] for i in range(3)}
    n = drawing.PARALLEL_FIGURES
    one, workers = ({str(tmp_path / d / f"f{i}.png"): (plots.failure_vs_lr, series, f"figure {i}", "")
                     for i in range(n)} for d in ("one", "workers"))
    for d in ("one", "workers"):
        (tmp_path / d).mkdir()
    monkeypatch.setattr(drawing, "PARALLEL_FIGURES", n + 1)
    drawing.draw(one)  # one process: fewer figures than PARALLEL_FIGURES
    monkeypatch.undo()
    drawing.draw(workers)  # worker processes (on a machine of at least 2 cores)
    drawn = [sorted((tmp_path / d).iterdir()) for d in ("one", "workers")]
    assert [p.name for p in drawn[0]] == [p.name for p in drawn[1]] and len(drawn[0]) == n
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(*drawn))
    # a figure a worker cannot write is named in the error, the first in the order of the jobs
    missing = lambda name: {str(tmp_path / "missing" / name): (plots.failure_vs_lr, series, name, "")}  # noqa: E731
    with pytest.raises(OSError) as info:
        drawing.draw({**missing("x.png"), **workers, **missing("y.png")})
    assert info.value.filename == str(tmp_path / "missing" / "x.png")
    # what a figure prints in a worker goes to standard error, not into the worker's answer
    (tmp_path / "loud_figure.py").write_text("from gradbench.reports import plots\n\n\ndef draw(data, path, title):\n"
                                             "    print('x' * 100000)\n    plots.failure_vs_lr(data, path, title)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import loud_figure

    drawing.draw({path: (loud_figure.draw, *job[1:]) for path, job in workers.items()})
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(drawn[0], sorted((tmp_path / "workers").iterdir())))

    def same_as_one(jobs) -> bool:
        """Draws `jobs` into the emptied workers/ directory: the same files as drawn in one process?"""
        for p in (tmp_path / "workers").iterdir():
            p.unlink()
        drawing.draw(jobs)
        return all(a.read_bytes() == b.read_bytes() for a, b in zip(drawn[0], sorted((tmp_path / "workers").iterdir())))

    # Figures no worker can take are drawn in this process: a function that cannot be pickled, ...
    assert same_as_one({path: (lambda *a: plots.failure_vs_lr(*a), *job[1:]) for path, job in workers.items()})
    # ... workers that end without an answer (here: not Python at all), ...
    monkeypatch.setattr(drawing.sys, "executable", "/bin/false")
    assert same_as_one(workers)
    # ... and no process to be had.
    def refuse(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(drawing.subprocess, "Popen", refuse)
    assert same_as_one(workers)
