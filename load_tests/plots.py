"""PNG plots of a run: latency CDF, throughput over time, hit ratio over time (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402

from load_tests.recorder import Recorder  # noqa: E402


def latency_cdf(recorders: list[Recorder], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rec in recorders:
        pts = rec.cdf()
        if pts:
            # x: latency; y: "nines" scale so the tail is readable
            ax.plot([p[0] for p in pts], [1 / max(1e-4, 1 - p[1]) for p in pts], label=rec.name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_yticks([1, 2, 10, 100, 1000, 10000], ["0", "50%", "90%", "99%", "99.9%", "99.99%"])
    ax.set_xlabel("latency (ms, from intended send)")
    ax.set_ylabel("percentile")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def throughput(recorders: list[Recorder], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for rec in recorders:
        tl = rec.timeline()
        if tl:
            ax.plot([p["t"] for p in tl], [p["ok"] for p in tl], label=f"{rec.name} ok/s")
            if any(p["errors"] for p in tl):
                ax.plot([p["t"] for p in tl], [p["errors"] for p in tl], "--", label=f"{rec.name} errors/s")
    return _finish(fig, ax, path, title, "requests per second")


def hit_ratio(series: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    """``series``: name -> probe samples (t, hits, misses), plotted as the ratio per interval."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, samples in series.items():
        ts, ratios = [], []
        for a, b in zip(samples, samples[1:]):
            h, m = b["hits"] - a["hits"], b["misses"] - a["misses"]
            if h + m:
                ts.append(b["t"])
                ratios.append(h / (h + m))
        if ts:
            ax.plot(ts, ratios, marker=".", label=name)
    ax.set_ylim(0, 1.02)
    return _finish(fig, ax, path, title, "router cache hit ratio (per interval)")


def bars(values: dict[str, float], path: Path, title: str, ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(list(values), list(values.values()))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def _finish(fig: Any, ax: Any, path: Path, title: str, ylabel: str) -> Path:
    """The shared tail of the time-series plots."""
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
