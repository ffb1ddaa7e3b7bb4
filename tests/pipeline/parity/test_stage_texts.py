"""What a person reads of a variant in MLflow: the rejected-because tag and the summary table's verdicts."""

from recforge.pipeline.parity.stage import format_table, rejection_tag

REASONS = ["test AUC 0.69123 is below 0.999 x the fp32 AUC 0.71000 (ratio 0.97356); " * 5,
           "prediction suite failed: expect_column_mean_to_be_between(rank_disagreement) observed 0.2"]


def test_rejection_tag_has_one_whole_line_per_reason():
    lines = rejection_tag(REASONS).split("\n")
    assert len(lines) == 2 and all(len(line) <= 240 for line in lines)
    assert lines[0].endswith(" …") and lines[1] == REASONS[1]
    for line, reason in zip(lines, REASONS, strict=True):
        assert set(line.removesuffix(" …").split()) <= set(reason.split())  # no word cut


def test_summary_table_verdict_is_not_cut_mid_word():
    summary = {"family": "dlrm", "batch": 256, "threads": 1, "eager_fp32_latency_ms_b256": 1.0, "variants": [
        {"variant": "student+int8_static", "size_bytes": 1000, "size_reduction": 4.0, "auc": 0.69,
         "delta_auc": -0.02, "latency_ms_b256": 0.5, "latency_vs_eager": 0.5, "passed": False, "reasons": REASONS}]}
    row = format_table(summary).splitlines()[-1]
    verdict = row.split("| reject: ")[1].removesuffix(" |")
    assert verdict.endswith(" …")
    assert set(verdict.removesuffix(" …").replace(";", " ").split()) <= set(" ".join(REASONS).replace(";", " ").split())
