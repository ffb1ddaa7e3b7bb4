"""Scatter plots whose point names never overlap: each point carries a small number, and a key beside the axes
lists the numbers with the names; and compress_and_validate's accuracy-vs-size plot built on it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from recforge.pipeline.compression.config import FP32

PASSED_COLOR, REJECTED_COLOR = "tab:green", "tab:red"


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def number_points(ax, points: Sequence[tuple[float, float]], first: int = 1) -> list[int]:
    """Write 1, 2, ... next to ``points`` (short numbers, offset from the marker: they do not hide each other the
    way full names do); returns the numbers written."""
    numbers = []
    for i, (x, y) in enumerate(points):
        ax.annotate(str(first + i), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points",
                    color="black", zorder=4)
        numbers.append(first + i)
    return numbers


def key_beside(fig, key_ax, title: str, rows: Sequence[str]) -> None:
    """A text key (``rows``: "1  fp32  0.7712 ...") in ``key_ax`` (an axes beside the plot, its frame hidden)."""
    key_ax.axis("off")
    key_ax.text(0.0, 1.0, "\n".join([title, *rows]), va="top", ha="left", family="monospace", fontsize=8,
                transform=key_ax.transAxes)


def log_ticks_plain(axis) -> None:
    """A log axis with plain-number ticks (0.5, 1, 2, 5, ...), not 2×10⁰ ... 6×10⁰."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_minor_locator(LogLocator(base=10, subs="auto"))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())  # minor ticks unlabelled


def plot_auc_vs_size(summary: Mapping[str, Any]):
    """compress_and_validate's plot: test AUC against weight size per variant (green passes parity, red is
    rejected), the fp32 AUC dashed, numbered points keyed beside the axes."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    fig, (ax, key_ax) = plt.subplots(1, 2, figsize=(10, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    shown = [t for t in summary["variants"] if t["size_bytes"] is not None and t["auc"] is not None]
    points = [(t["size_bytes"] / 1024, t["auc"]) for t in shown]
    for t, (x, y) in zip(shown, points, strict=True):
        ax.scatter(x, y, color=PASSED_COLOR if t["passed"] else REJECTED_COLOR, s=30, zorder=3)
    numbers = number_points(ax, points)
    handles = [Line2D([], [], ls="", marker="o", color=PASSED_COLOR, label="passes parity"),
               Line2D([], [], ls="", marker="o", color=REJECTED_COLOR, label="rejected (reason in the table)")]
    fp32 = next((t for t in summary["variants"] if t["variant"] == FP32), None)
    if fp32 and fp32["auc"] is not None:
        handles.append(ax.axhline(fp32["auc"], color="grey", lw=0.8, ls="--", label="fp32 AUC (the reference)"))
    ax.set_xscale("log")
    log_ticks_plain(ax.xaxis)
    ax.set_xlabel("weights (KiB, log scale)")
    ax.set_ylabel("test AUC")
    ax.set_title(f"{summary['family']}: accuracy vs size of each variant", fontsize=10)
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    key_beside(fig, key_ax, f"{'#':>2}  {'variant':<22} {'KiB':>6}  {'AUC':<6}  parity",
               [f"{n:>2}  {t['variant']:<22} {t['size_bytes'] / 1024:>6.0f}  {t['auc']:.4f}  "
                f"{'pass' if t['passed'] else 'reject'}" for n, t in zip(numbers, shown, strict=True)])
    fig.tight_layout()
    return fig
