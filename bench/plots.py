"""Matplotlib figures for reports and the probe (PNG, labelled axes, log scales where data spans decades)."""
from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gradient_profile(series: dict[str, tuple[str, list[list]]], path, title: str = "") -> None:
    """Per-layer (or per-step) pre-activation gradient norm at initialisation, one line per label.

    Args:
      series: label -> (axis: "layers" or "steps", per-seed log10 norms per layer; None or "inf"/"-inf"
        where a norm was not a number, overflowed or was exactly zero: such points are left out).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    axis = "layers"
    for label, (axis, rows) in series.items():
        logs = np.array([[np.nan if v is None else float(v) for v in row] for row in rows], dtype=float)
        logs[~np.isfinite(logs)] = np.nan
        if not np.isfinite(logs).any():
            continue
        x = np.arange(1, logs.shape[1] + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(logs, 0)
            low, high = np.nanquantile(logs, 0.1, 0), np.nanquantile(logs, 0.9, 0)
        line, = ax.plot(x, median, label=label)
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel(f"{axis[:-1]} (input side first)")
    ax.set_ylabel("log10 ‖∂loss/∂pre-activation‖ at init\n(median, 10–90% band)")
    ax.set_title(title or "gradient norm per layer at initialisation", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    _save(fig, path)


def failure_vs_lr(series: dict[str, list[tuple[float, float, float, float]]], path, title: str) -> None:
    """Failure rate (diverged or collapsed, with its 95% interval) against learning rate, one line per variant.

    Args:
      series: label -> [(lr, rate, ci_low, ci_high), ...].
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (label, points) in enumerate(series.items()):
        points = sorted(points)
        lr = np.array([p[0] for p in points]) * (1.0 + 0.04 * i)  # small offset so bars do not overlap
        rate = np.array([p[1] for p in points])
        err = np.array([[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]])
        ax.errorbar(lr, rate, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("failure rate: diverged or collapsed (95% Wilson)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    _save(fig, path)


def loss_curves(series: dict[str, tuple[list[int], list[list]]], path, title: str) -> None:
    """Training loss against step: median over seeds and a 25–75% band, one line per variant.

    Args:
      series: label -> (steps, per-seed losses with None where a seed had stopped).
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, (steps, losses) in series.items():
        values = np.array([[np.nan if v is None else v for v in row] for row in losses], dtype=float)
        if not np.isfinite(values).any():
            continue
        with warnings.catch_warnings():  # all-NaN columns (every seed stopped) are expected
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(values, 0)
            low, high = np.nanquantile(values, 0.25, 0), np.nanquantile(values, 0.75, 0)
        line, = ax.plot(steps, median, label=label)
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (median over seeds, 25–75% band)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    _save(fig, path)
