"""Matplotlib figures for reports and the probe (PNG, labelled axes, log scales where data spans decades)."""
from __future__ import annotations

import os
import textwrap
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


LINE_STYLES = ("-", "--", ":", "-.")
MANY = 6  # with more series than this the legend goes beside the axes, where it hides no data


def _save(fig, path):
    """Writes the figure whole or not at all (to a hidden file beside `path`, then renamed)."""
    fig.tight_layout()
    partial = os.path.join(os.path.dirname(str(path)), f".{os.path.basename(str(path))}.partial")
    try:
        fig.savefig(partial, format="png", dpi=110, bbox_inches="tight")  # "tight": a legend beside the axes is kept
        os.replace(partial, path)
    finally:
        plt.close(fig)
        if os.path.exists(partial):
            os.unlink(partial)


def series_styles(n: int) -> list[dict]:
    """Matplotlib line keywords for n series, pairwise distinct: the ten tab10 colours, then again dashed, ..."""
    colors = plt.get_cmap("tab10").colors
    return [{"color": colors[i % len(colors)], "linestyle": LINE_STYLES[(i // len(colors)) % len(LINE_STYLES)]}
            for i in range(n)]


def _legend(ax, n: int) -> None:
    """The legend inside the axes for a few series, beside them for many (one column per 20 entries)."""
    if not ax.get_legend_handles_labels()[0]:
        return
    if n > MANY:
        ncol = 1 + (n - 1) // 20
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, ncol=ncol,
                  handlelength=3.0)
        longest = max(len(label) for label in ax.get_legend_handles_labels()[1])
        fig = ax.figure  # widened by the legend's width, so the axes keep theirs
        fig.set_figwidth(fig.get_figwidth() + ncol * (0.6 + 0.055 * longest))
    else:
        ax.legend(fontsize=7, handlelength=3.0)


def _nan(rows) -> np.ndarray:
    """Rows of JSON numbers (None where missing or not finite) as a float array with NaN there."""
    values = np.array([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=float)
    values[~np.isfinite(values)] = np.nan
    return values


def _spans_decades(values: np.ndarray) -> bool:
    """Whether positive data covers well over a decade, so that a log axis shows it better."""
    finite = values[np.isfinite(values)]
    return finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 30


def gradient_profile(series: dict[str, tuple[str, list[list]]], path, title: str = "") -> None:
    """Per-layer (or per-step) pre-activation gradient norm at initialisation, one line per label.

    Args:
      series: label -> (axis: "layers" or "steps", per-seed log10 norms per layer; None or "inf"/"-inf"
        where a norm was not a number, overflowed or was exactly zero: such points are left out).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    axis = "layers"
    alpha = 0.2 if len(series) <= MANY else 0.08  # many overlapping bands would hide the lines
    for (label, (axis, rows)), style in zip(series.items(), series_styles(len(series))):
        logs = _nan(rows)
        if not np.isfinite(logs).any():
            continue
        x = np.arange(1, logs.shape[1] + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(logs, 0)
            low, high = np.nanquantile(logs, 0.1, 0), np.nanquantile(logs, 0.9, 0)
        ax.plot(x, median, label=label, **style)
        ax.fill_between(x, low, high, color=style["color"], alpha=alpha)
    ax.set_xlabel(f"{axis[:-1]} (input side first)")
    ax.set_ylabel("log10 ‖∂loss/∂pre-activation‖ at init\n(median, 10–90% band)")
    ax.set_title(title or "gradient norm per layer at initialisation", fontsize=10)
    _legend(ax, len(series))
    _save(fig, path)


def failure_vs_lr(series: dict[str, list[tuple[float, float, float, float]]], path, title: str) -> None:
    """Failure rate (diverged or collapsed, with its 95% interval) against learning rate, one line per variant.

    Args:
      series: label -> [(lr, rate, ci_low, ci_high), ...].
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, ((label, points), style) in enumerate(zip(series.items(), series_styles(len(series)))):
        points = sorted(points)
        lr = np.array([p[0] for p in points]) * (1.0 + 0.04 * i)  # small offset so bars do not overlap
        rate = np.array([p[1] for p in points])
        err = np.array([[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]])
        ax.errorbar(lr, rate, yerr=err, marker="o", capsize=3, label=label, **style)
    ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("failure rate: diverged or collapsed (95% Wilson)")
    ax.set_title(title, fontsize=10)
    _legend(ax, len(series))
    _save(fig, path)


def grid_maps(panels: dict[str, tuple[list, list, list[list]]], path, title: str, *, rows: str, cols: str,
              value: str, log10: bool = False, vmin: float | None = None, vmax: float | None = None) -> None:
    """Heatmaps of a value over a two-factor grid, one panel per value of a third factor, each cell annotated.

    Args:
      panels: panel label -> (row values, column values, matrix [row][col] of JSON numbers; None = no value).
      log10: colour by log10 of the value on a diverging scale centred on 1 (red above, blue below, clipped
        at 1e-6 and 1e6); the annotations stay the value itself.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(0.8 + 3.6 * len(panels), 3.4), squeeze=False,
                             sharey=True)
    cmap = plt.get_cmap("RdBu_r" if log10 else "viridis").with_extremes(bad="0.85")
    if log10:
        vmin, vmax = -6.0, 6.0
    for ax, (label, (row_values, col_values, matrix)) in zip(axes[0], panels.items()):
        shown = _nan(matrix)
        with np.errstate(divide="ignore", invalid="ignore"):
            colour = np.log10(np.where(shown > 0, shown, np.nan)) if log10 else shown
        image = ax.imshow(np.ma.masked_invalid(colour), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                          origin="lower")
        for i in range(len(row_values)):
            for j in range(len(col_values)):
                v = shown[i, j]
                red, green, blue, _ = image.cmap(image.norm(colour[i, j])) if np.isfinite(colour[i, j]) else (1, 1, 1, 1)
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # white text on a dark cell
                ax.text(j, i, "–" if np.isnan(v) else f"{v:.2g}" if 1e-2 <= abs(v) < 1e3 or v == 0 else f"{v:.0e}",
                        ha="center", va="center", fontsize=6.5, color="white" if dark else "black")
        ax.set_xticks(range(len(col_values)), [f"{c:g}" for c in col_values], fontsize=8)
        ax.set_yticks(range(len(row_values)), [f"{r:g}" for r in row_values], fontsize=8)
        ax.set_xlabel(cols)
        ax.set_title(label, fontsize=9)
    axes[0][0].set_ylabel(rows)
    bar = fig.colorbar(image, ax=axes[0].tolist(), shrink=0.9)
    bar.set_label(f"log10 {value} (clipped at ±6)" if log10 else value, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # colorbar beside the panels: no tight_layout
    plt.close(fig)


def loss_curves(series: dict[str, tuple[list[int], list[list]]], path, title: str) -> None:
    """Training loss against step: median over seeds and a 25–75% band, one line per variant.

    Args:
      series: label -> (steps, per-seed losses with None where a seed had stopped).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for (label, (steps, losses)), style in zip(series.items(), series_styles(len(series))):
        values = _nan(losses)
        values[~(values > 0)] = np.nan  # a log axis shows positive finite losses only
        if not np.isfinite(values).any():
            continue
        with warnings.catch_warnings():  # all-NaN columns (every seed stopped) are expected
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(values, 0)
            low, high = np.nanquantile(values, 0.25, 0), np.nanquantile(values, 0.75, 0)
        ax.plot(steps, median, label=label, **style)
        ax.fill_between(steps, low, high, color=style["color"], alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (median over seeds, 25–75% band)")
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        _legend(ax, len(series))
    else:
        ax.text(0.5, 0.5, "no finite loss to show (every seed diverged at once)", ha="center", va="center",
                transform=ax.transAxes)
    _save(fig, path)


def _diagnostic_title(title: str, description: str) -> str:
    return f"{title}\n" + "\n".join(textwrap.wrap(description, 90))


def diagnostic_trace(series: dict[str, tuple[list[int], list[list]]], path, title: str, *, name: str,
                     description: str) -> None:
    """A model diagnostic at each training step: median over seeds and a 25–75% band, one line per variant.

    Args:
      series: label -> (steps, per-seed values; None where a value was not finite or the seed had stopped).
      name, description: the diagnostic (a model family's DIAGNOSTICS entry), for the axis and the title.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    arrays = {label: (steps, _nan(rows)) for label, (steps, rows) in series.items()}
    log = _spans_decades(np.concatenate([v.ravel() for _, v in arrays.values()] or [np.zeros(0)]))
    for i, ((label, (steps, values)), style) in enumerate(zip(arrays.items(), series_styles(len(arrays)))):
        if not np.isfinite(values).any():
            continue
        # Saturated diagnostics (entropy 0) put several variants on one line: earlier lines are wider, so
        # the ones drawn over them leave them visible.
        style = {**style, "linewidth": 1.2 + 2.0 * (len(arrays) - 1 - i) / max(len(arrays) - 1, 1)}
        with warnings.catch_warnings():  # steps where no seed has a finite value are expected
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(values, 0)
            low, high = np.nanquantile(values, 0.25, 0), np.nanquantile(values, 0.75, 0)
        ax.plot(steps, median, label=label, **style)
        ax.fill_between(steps, low, high, color=style["color"], alpha=0.2)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{name}{' (log scale)' if log else ''}\n(median over seeds, 25–75% band)")
    ax.set_title(_diagnostic_title(title, description), fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        _legend(ax, len(arrays))
    else:
        ax.text(0.5, 0.5, f"no finite value of {name} to show", ha="center", va="center", transform=ax.transAxes)
    _save(fig, path)


def diagnostic_vs_lr(series: dict[str, list[tuple[float, list]]], path, title: str, *, name: str,
                     description: str, reduction: str) -> None:
    """A model diagnostic reduced over training (per seed) against learning rate: median and 25–75% bars per variant.

    Seeds whose value is not finite (overflow) are left out of the median and counted beside the point; a
    learning rate where no seed's value is finite is marked with a triangle at the top edge.

    Args:
      series: label -> [(lr, per-seed reduced values, None where not finite), ...].
      name, description, reduction: the diagnostic and how it is reduced over the steps ("max" or "min").
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    all_values = np.array([v for points in series.values() for _, vs in points for v in vs if v is not None], float)
    log = _spans_decades(all_values)
    top = ax.get_xaxis_transform()  # x in data, y in axes coordinates
    lrs = [lr for points in series.values() for lr, _ in points]
    decades = max(np.log10(max(lrs) / min(lrs)), 0.5) if lrs else 1.0
    overflowed = False
    for i, ((label, points), style) in enumerate(zip(series.items(), series_styles(len(series)))):
        rows = []
        for lr, values in sorted(points, key=lambda p: p[0]):
            finite = np.array([v for v in values if v is not None and np.isfinite(v)], float)
            quartiles = np.quantile(finite, [0.25, 0.5, 0.75]) if finite.size else np.full(3, np.nan)
            shifted = lr * 10 ** (0.012 * decades * i)  # a small offset per variant, so bars do not overlap
            rows.append((shifted, *quartiles, len(values) - finite.size, len(values)))
        x, low, median, high, bad, n = (np.array(c) for c in zip(*rows))
        ok = np.isfinite(median)
        ax.errorbar(x[ok], median[ok], yerr=[median[ok] - low[ok], high[ok] - median[ok]], marker="o", capsize=3,
                    label=label, **style)
        for xi, mi, bi, ni in zip(x, median, bad, n):
            if not np.isfinite(mi):
                overflowed = True
                ax.plot([xi], [0.97], marker="^", color=style["color"], transform=top, clip_on=False)
            elif bi:
                ax.annotate(f"{bi}/{ni} not finite", (xi, mi), textcoords="offset points", xytext=(4, 4),
                            fontsize=6, color=style["color"])
    ax.set_xscale("log")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("learning rate (as run, log scale)")
    ax.set_ylabel(f"{reduction} of {name} over training{' (log scale)' if log else ''}\n"
                  "per seed: median, 25–75% bars")
    note = " (▲ at the top: no seed's value finite)" if overflowed else ""
    ax.set_title(_diagnostic_title(title + note, description), fontsize=9)
    _legend(ax, len(series))
    _save(fig, path)


def forest(rows: list[dict], path, title: str = "") -> None:
    """One line per claim: its primary effect and 95% interval in units of its margin, oriented so that right
    is what the claim says, with the margin band (|effect| < 1 margin: negligible) and each replicate block's
    estimate as a small mark. rows: label, effect, low, high (margins; None: not estimable), blocks (margins)."""
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2))
    ax.axvspan(-1, 1, color="0.9", zorder=0, label="within the margin (negligible)")
    ax.axvline(0, color="0.5", linewidth=0.8)
    clip = 8.0  # effects beyond 8 margins are drawn at the edge, with an arrow
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        if r["effect"] is None:
            ax.text(0, y, "not estimable", fontsize=7, ha="center", va="center", color="0.4")
            continue
        low, high, effect = (float(np.clip(v, -clip, clip)) for v in (r["low"], r["high"], r["effect"]))
        ax.plot([low, high], [y, y], color="k", linewidth=1.2)
        marker = {"≥": ">", "≤": "<"}.get(r.get("bound", ""), "o")  # a bound points the way it is open
        ax.plot([effect], [y], marker, color="k", markersize=5)
        for b in r.get("blocks", []):
            if b is not None:
                ax.plot([float(np.clip(b, -clip, clip))], [y + 0.22], "|", color="tab:blue", markersize=6)
        for end, raw in ((low, r["low"]), (high, r["high"])):
            if abs(raw) > clip:
                ax.annotate("", xy=(np.sign(raw) * (clip + 0.6), y), xytext=(end, y),
                            arrowprops={"arrowstyle": "->", "color": "k", "lw": 1.0})
    ax.set_yticks(range(len(rows)), [r["label"] for r in reversed(rows)], fontsize=7)
    ax.set_xlim(-clip - 1, clip + 1)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("primary effect in margins (right: as the claim says; ticks above: replicate blocks)", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    _save(fig, path)


def reach_panels(panels: list[tuple[str, dict]], path, title: str = "") -> None:
    """One panel per comparison: the share of seeds reaching the target at every learning rate, baseline against
    variant, each arm's tuned learning rate marked. panels: (panel title, {arm label: (lrs, shares, tuned lr)})."""
    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False)
    for ax, (name, arms) in zip(axes.flat, panels):
        for (label, (lrs, shares, tuned)), style in zip(arms.items(), ({"color": "0.45", "linestyle": "--"},
                                                                        {"color": "tab:blue", "linestyle": "-"})):
            ax.plot(lrs, shares, marker=".", label=label, **style)
            ax.axvline(tuned, ymax=0.08, color=style["color"], linewidth=2)
        ax.set_xscale("log")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("\n".join(textwrap.wrap(name, 40)), fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("learning rate", fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("share reaching the target", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)
