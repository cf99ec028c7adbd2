"""Report figures: every series of a plot can be told apart."""
from bench.reports import plots


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
