"""recforge.pipeline.training.tracking and the nightly summary: one-line texts, UI links, the families table."""

from recforge.pipeline.training.tracking import experiment_url, one_line, registry_url, run_url
from recforge.pipeline.training.train import beats_baseline_cell, summary_markdown


def test_one_line_shortens_at_a_word_boundary():
    text = "AUC 0.7012 < 0.999 x reference 0.7100 on slice gender=2\nand the mean CTR moved by 0.0300 " * 4
    line = one_line(text, 80)
    assert "\n" not in line and len(line) <= 80 and line.endswith(" …")
    assert set(line.removesuffix(" …").split()) <= set(text.split())  # every word whole
    assert one_line("short reason") == "short reason"


def test_experiment_url_opens_the_model_training_view():
    url = experiment_url("http://127.0.0.1:5000/", "7")
    assert url == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"


def test_every_ui_link_asks_for_the_model_training_view():
    """MLflow 3.17's UI ignores the experiment kind tag: each link must carry the view (tracking's docstring)."""
    assert run_url("http://h:5000", "7", "abc") == "http://h:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
    assert registry_url("http://h:5000/") == "http://h:5000/#/models?workflowType=machine_learning"
    assert registry_url("http://h:5000", "recforge-dlrm") == (
        "http://h:5000/#/models/recforge-dlrm?workflowType=machine_learning")
    assert registry_url("http://h:5000", "recforge-dlrm", "3") == (
        "http://h:5000/#/models/recforge-dlrm/versions/3?workflowType=machine_learning")


def test_summary_has_no_none_and_shows_the_gate_warnings():
    summary = {"families": [
        {"family": "dlrm", "test_auc": 0.77, "test_logloss": 0.5, "run_id": "a", "beats_baseline": True},
        {"family": "ncf", "test_auc": 0.70, "test_logloss": 0.6, "run_id": "b", "beats_baseline": False},
        {"family": "logreg", "test_auc": 0.72, "test_logloss": 0.55, "run_id": "c", "beats_baseline": None}]}
    text = summary_markdown(summary, ["Data checks: **warning**", "- volume: 79 rows below 80"])
    assert "None" not in text
    assert "| logreg | 0.7200 | 0.5500 | — (the baseline) |" in text
    assert "| dlrm | 0.7700 | 0.5000 | yes |" in text and "| ncf | 0.7000 | 0.6000 | no |" in text
    assert text.index("volume: 79 rows") < text.index("| family |")
    assert beats_baseline_cell({"family": "dlrm", "beats_baseline": None}) == "— (no baseline trained)"
