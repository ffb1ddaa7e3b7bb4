"""The profiling plots read at a glance: numbered points keyed beside the axes, every mark in a legend, a capped
LBT drawn and named as a lower bound, plain-number log ticks."""

import pytest

from recforge.contracts.targets import CPU_ONNXRUNTIME as CPU
from recforge.pipeline.profiling.plots import close_figure, plot_p95_vs_load, plot_pareto
from recforge.pipeline.profiling.summary import family_summary
from tests.pipeline.profiling.test_summary import row, synthetic_doc, synthetic_result


@pytest.fixture
def summary():
    results = [synthetic_result("fp32", 0.75, {CPU: 400.0}), synthetic_result("pruned50", 0.749, {CPU: 800.0})]
    results[1]["profiles"][0]["lbt_capped"] = True
    return family_summary("dlrm", results, [row("fp32", 1.0, 0.75), row("pruned50", 0.5, 0.749),
                                            row("fp32+fp16", 0.9, 0.7499)])


def test_pareto_numbers_points_and_explains_every_mark(summary):
    figure = plot_pareto(summary)
    left, right, key = figure.axes
    numbers = sorted(t.get_text() for t in left.texts)
    assert numbers == ["1", "2", "3"]  # short numbers on the points, not overlapping names
    listing = key.texts[0].get_text()
    assert all(name in listing for name in ("fp32", "pruned50", "fp32+fp16")) and "≥800" in listing
    assert {"on the Pareto front (line)", "dominated", "black edge: profiled"} <= set(
        left.get_legend_handles_labels()[1] or [t.get_text() for t in left.get_legend().get_texts()])
    right_labels = [t.get_text() for t in right.get_legend().get_texts()]
    assert any("capped" in label for label in right_labels) and any(CPU in label for label in right_labels)
    close_figure(figure)


def test_p95_plot_has_plain_log_ticks_and_a_capped_lower_bound():
    figure = plot_p95_vs_load(synthetic_doc("fp32", lbt=400.0, capped=True))
    ax = figure.axes[0]
    figure.canvas.draw()
    ticks = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert ticks and not any("10^" in t or "times" in t or "×" in t for t in ticks)
    labels = ax.get_legend_handles_labels()[1]
    assert any("lower bound" in label for label in labels) and "p95 meets the SLO" in labels
    assert any(t.get_text() == "LBT ≥" for t in ax.texts)
    close_figure(figure)
