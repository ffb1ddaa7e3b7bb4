"""Accuracy-parity gate of compressed variants (recforge.pipeline.parity.gate): parity passes; AUC loss, broken
predictions, a CTR shift, rank scrambling and a one-slice regression are rejected with a reason naming the rule."""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from recforge.core.errors import ConfigError, DataError
from recforge.pipeline.parity.gate import ParityConfig, ParityVerdict, gate, main, rank_disagreement, validate_variant

ROWS = 4000
AGE_P = [0.04, 0.2, 0.28, 0.2, 0.16, 0.08, 0.04]  # buckets 1, 6, 7 (~160, 320, 160 rows) are below 500
MLFLOW_METRIC_NAME = re.compile(r"^[/\w.\- ]*$")  # mlflow.utils.validation (Windows-safe subset)


def synthetic_split(rows: int = ROWS, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """(labels, frame with age_bucket/gender, a reference model's probabilities with test AUC ~0.75)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "age_bucket": rng.choice(np.arange(1, 8), rows, p=AGE_P),
        "gender": rng.choice([1, 2], rows, p=[0.7, 0.3]),
        "timestamp": 887_414_400 + np.arange(rows),
    })
    logit = 1.2 * rng.normal(size=rows) - 0.4
    labels = (rng.random(rows) < _sigmoid(logit + rng.normal(size=rows))).astype(np.float32)
    return labels, frame, _sigmoid(logit)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p):
    return np.log(p / (1 - p))


@pytest.fixture(scope="module")
def data():
    labels, frame, reference = synthetic_split()
    return SimpleNamespace(labels=labels, frame=frame, reference=reference, split=(labels, frame))


@pytest.fixture(scope="module")
def gx_root(tmp_path_factory):
    """One GX project for the module (as in production: every variant is a run of the same suite)."""
    return tmp_path_factory.mktemp("gx")


def check(name, probabilities, data, gx_root, **config) -> ParityVerdict:
    return validate_variant(name, probabilities, data.reference, data.split, gx_root=gx_root,
                            config=ParityConfig(**config))


def reasons_starting(verdict: ParityVerdict, prefix: str) -> list[str]:
    return [r for r in verdict.reasons if r.startswith(prefix)]


@pytest.fixture(scope="module")
def identical(data, gx_root) -> ParityVerdict:
    return check("fp32+int8_static", data.reference.copy(), data, gx_root)


def test_identical_predictions_pass(identical, data):
    v = identical
    assert v.passed and v.reasons == [], v.reasons
    m = v.metrics
    assert 0.7 < m["auc"] == m["ref_auc"] < 0.8
    assert m["delta_auc"] == 0 and m["auc_ratio"] == 1 and m["delta_logloss"] == 0
    assert m["spearman"] == pytest.approx(1.0) and m["mean_ctr"] == m["ref_mean_ctr"]
    assert m["rows"] == ROWS and m["nonfinite_predictions"] == 0
    assert v.suite_statistics["evaluated_expectations"] == 4
    assert v.suite_statistics["unsuccessful_expectations"] == 0


def test_slices_evaluated_and_small_ones_skipped(identical, data):
    v = identical
    by_key = {(s["column"], s["value"]): s for s in v.slices}
    assert set(by_key) == {("age_bucket", a) for a in range(1, 8)} | {("gender", 1), ("gender", 2)}
    small = by_key[("age_bucket", 1)]
    assert small["status"] == "skipped" and small["rows"] < 500 and "< 500" in small["reason"]
    assert f"slice age_bucket=1 skipped: {small['rows']} rows < 500" in v.notes
    assert "slice_auc.age_bucket.1" not in v.metrics and v.metrics["slice_rows.age_bucket.1"] == small["rows"]
    assert {key for key, s in by_key.items() if s["status"] == "skipped"} == {
        ("age_bucket", 1), ("age_bucket", 6), ("age_bucket", 7)}
    assert all(s["status"] == "passed" for s in v.slices if s["rows"] >= 500)
    assert v.metrics["slices_evaluated"] == 6 and v.metrics["slices_skipped"] == 3
    assert v.metrics["slice_auc.gender.2"] == v.metrics["slice_ref_auc.gender.2"] == by_key[("gender", 2)]["auc"]
    assert sum(by_key[("gender", g)]["rows"] for g in (1, 2)) == ROWS


def test_metrics_are_mlflow_safe_and_to_dict_is_json(identical):
    for key, value in identical.metrics.items():
        assert MLFLOW_METRIC_NAME.match(key), key
        assert isinstance(value, float), key
    data = json.loads(json.dumps(identical.to_dict(), allow_nan=False))
    assert data["passed"] is True and data["name"] == "fp32+int8_static"
    assert data["metrics"]["auc"] == identical.metrics["auc"]
    assert data["data_docs_index"].endswith("index.html")


def test_data_docs_written(identical, gx_root):
    index = identical.data_docs_index
    assert index.is_file() and gx_root in index.parents
    assert identical.data_docs_pages and all(p.is_file() for p in identical.data_docs_pages)
    assert "parity_predictions" in index.read_text()
    assert "fp32+int8_static" in str(identical.data_docs_pages[0])  # the GX run is named after the variant


def test_tiny_noise_passes(data, gx_root):
    rng = np.random.default_rng(1)
    noisy = _sigmoid(_logit(data.reference) + rng.normal(scale=1e-3, size=ROWS))
    v = check("fp32+fp16", noisy, data, gx_root)
    assert v.passed, v.reasons
    assert 0.999 < v.metrics["spearman"] < 1 and abs(v.metrics["delta_auc"]) < 1e-3


def test_constant_predictions_rejected_on_auc(data, gx_root):
    v = check("pruned90", np.full(ROWS, 0.4), data, gx_root)
    assert not v.passed
    ref_auc = v.metrics["ref_auc"]
    assert v.reasons[0] == f"test AUC 0.5000 < 0.999 × fp32 {ref_auc:.4f} = {0.999 * ref_auc:.4f}"
    assert reasons_starting(v, "slice gender=1 (")  # every evaluated slice fails too
    spearman = reasons_starting(v, "prediction suite: expect_column_mean_to_be_between(rank_disagreement")
    assert spearman and "predictions are all tied" in spearman[0]
    assert math.isnan(v.metrics["spearman"])


def test_random_predictions_rejected_on_auc(data, gx_root):
    v = check("student", np.random.default_rng(2).uniform(0.1, 0.6, ROWS), data, gx_root)
    assert not v.passed
    assert reasons_starting(v, "test AUC 0.")
    assert v.metrics["auc"] < 0.55 and abs(v.metrics["spearman"]) < 0.1


def test_nan_predictions_fail_without_crashing(data, gx_root):
    probs = data.reference.copy()
    probs[[5, 50, 500]] = np.nan
    v = check("fp32+int8_dynamic", probs, data, gx_root)
    assert not v.passed
    assert v.reasons[0] == (
        f"3 of {ROWS} predictions are not finite (NaN/inf): test AUC, logloss and slice AUCs not computed")
    assert f"prediction suite: expect_column_values_to_not_be_null(prediction): 3 of {ROWS} rows unexpected" in (
        v.reasons)
    assert math.isnan(v.metrics["auc"]) and math.isnan(v.metrics["logloss"]) and math.isnan(v.metrics["delta_auc"])
    assert v.metrics["nonfinite_predictions"] == 3 and not math.isnan(v.metrics["ref_auc"])
    assert {s["status"] for s in v.slices} == {"skipped", "not_evaluated"}
    assert json.loads(json.dumps(v.to_dict(), allow_nan=False))["metrics"]["auc"] is None


def test_out_of_range_and_inf_predictions_fail_the_range(data, gx_root):
    probs = data.reference.copy()
    probs[:4] = [1.7, -0.1, 1.7, np.inf]
    v = check("fp32+fp16", probs, data, gx_root)
    assert not v.passed
    assert (f"prediction suite: expect_column_values_to_be_between(prediction, 0..1): 4 of {ROWS} rows unexpected,"
            " e.g. [-0.1, 1.7, inf]") in v.reasons, v.reasons


def test_mean_ctr_shift_fails_the_band_while_auc_holds(data, gx_root):
    v = check("fp32+int8_static", np.clip(data.reference + 0.05, 0, 1), data, gx_root)
    assert not v.passed
    assert not reasons_starting(v, "test AUC") and v.metrics["auc_ratio"] > 0.9999
    band = reasons_starting(v, "prediction suite: expect_column_mean_to_be_between(prediction, ")
    assert band, v.reasons
    ref_mean = v.metrics["ref_mean_ctr"]
    assert band[0].startswith(
        f"prediction suite: expect_column_mean_to_be_between(prediction, {ref_mean - 0.01:.4g}..{ref_mean + 0.01:.4g})"
        f": observed {v.metrics['mean_ctr']:#.4g}")
    assert v.metrics["delta_mean_ctr"] == pytest.approx(0.05, abs=2e-3)


def test_rank_scrambled_variant_fails_spearman(data, gx_root):
    rng = np.random.default_rng(3)
    probs = data.reference.copy()
    picked = rng.choice(ROWS, ROWS // 10, replace=False)
    probs[picked] = rng.permutation(probs[picked])  # same values, 10% of the rows reshuffled
    v = check("pruned50", probs, data, gx_root)
    assert not v.passed
    assert v.metrics["mean_ctr"] == pytest.approx(v.metrics["ref_mean_ctr"])
    rho = v.metrics["spearman"]
    assert 0.8 < rho < 0.99
    assert (f"prediction suite: expect_column_mean_to_be_between(rank_disagreement, 0..0.01): observed"
            f" {1 - rho:#.4g} = 1 - Spearman ρ {rho:.4f}, need ρ >= 0.99") in v.reasons, v.reasons


def test_one_gender_regression_caught_by_the_slice_rule(data, gx_root):
    rng = np.random.default_rng(4)
    women = (data.frame["gender"] == 2).to_numpy()
    probs = data.reference.copy()
    probs[women] = _sigmoid(_logit(probs[women]) + rng.normal(scale=0.6, size=women.sum()))
    # overall rules loosened: only the slice rule is left to notice
    v = check("student", probs, data, gx_root, min_auc_ratio=0.9, max_logloss_increase=0.5, min_spearman=0.5,
              mean_ctr_tolerance=0.05)
    assert not v.passed
    assert all(r.startswith("slice ") for r in v.reasons), v.reasons  # nothing overall: a slice rule caught it
    slice_2 = next(s for s in v.slices if s["column"] == "gender" and s["value"] == 2)
    assert slice_2["status"] == "failed"
    assert (f"slice gender=2 ({slice_2['rows']} rows): AUC {slice_2['auc']:.4f} < 0.995 × fp32 "
            f"{slice_2['ref_auc']:.4f} = {0.995 * slice_2['ref_auc']:.4f}") in v.reasons
    assert not reasons_starting(v, "slice gender=1")  # (age slices mix both genders: some of them fail too)
    assert v.metrics["slice_auc_ratio.gender.1"] == 1.0 and v.metrics["slice_auc_ratio.gender.2"] < 0.995
    assert v.metrics["worst_slice_auc_ratio"] == v.metrics["slice_auc_ratio.gender.2"]


def test_rank_disagreement_mean_is_one_minus_spearman():
    rng = np.random.default_rng(5)
    ref = rng.random(1000)
    variant = np.round(ref + rng.normal(scale=0.1, size=1000), 2)  # ties on the variant's side
    column, rho = rank_disagreement(variant, ref)
    assert rho == pytest.approx(spearmanr(variant, ref).statistic, abs=1e-12)
    assert column.min() >= 0 and column.mean() == pytest.approx(1 - rho)
    variant[:10] = np.nan
    column, rho = rank_disagreement(variant, ref)
    assert np.isnan(column[:10]).all() and rho == pytest.approx(spearmanr(variant[10:], ref[10:]).statistic)
    column, rho = rank_disagreement(np.full(1000, 0.3), ref)
    assert math.isnan(rho) and (column == 1.0).all()


def test_inputs_that_make_parity_meaningless_raise(data, gx_root):
    ref = data.reference
    with pytest.raises(DataError, match="expected 4000 values"):
        validate_variant("x", ref[:-1], ref, data.split, gx_root=gx_root)
    with pytest.raises(DataError, match="reference fp32 has 1 non-finite"):
        validate_variant("x", ref, np.where(np.arange(ROWS) == 0, np.nan, ref), data.split, gx_root=gx_root)
    with pytest.raises(DataError, match=r"slice column\(s\) \['country'\]"):
        validate_variant("x", ref, ref, data.split, gx_root=gx_root, config=ParityConfig(slice_columns=("country",)))
    with pytest.raises(DataError, match="both classes"):
        validate_variant("x", ref, ref, (np.ones(ROWS), data.frame), gx_root=gx_root)
    with pytest.raises(DataError, match="0 or 1"):
        validate_variant("x", ref, ref, (np.full(ROWS, 0.5), data.frame), gx_root=gx_root)
    with pytest.raises(ConfigError, match="variant name"):
        validate_variant("../x", ref, ref, data.split, gx_root=gx_root)


def test_parity_config_from_dict():
    assert ParityConfig.from_dict(None) == ParityConfig()
    cfg = ParityConfig.from_dict({"min_auc_ratio": 0.998, "slice_columns": ["gender"], "min_spearman": 1})
    assert cfg.min_auc_ratio == 0.998 and cfg.slice_columns == ("gender",) and cfg.min_spearman == 1.0
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['min_auc'\]"):
        ParityConfig.from_dict({"min_auc": 0.99})
    with pytest.raises(ConfigError, match="min_slice_samples must be int"):
        ParityConfig.from_dict({"min_slice_samples": "500"})
    with pytest.raises(ConfigError, match="min_spearman: Input should be less than or equal to 1"):
        ParityConfig.from_dict({"min_spearman": 1.5})
    with pytest.raises(ConfigError, match="prediction_min < prediction_max"):
        ParityConfig.from_dict({"prediction_min": 1.0, "prediction_max": 0.0})
    with pytest.raises(ConfigError, match="min_auc_ratio"):
        ParityConfig.from_dict({"min_auc_ratio": float("nan")})


def test_gate(identical):
    rejected = ParityVerdict(name="pruned90", passed=False, reasons=["test AUC 0.5 < ..."], metrics={},
                             slices=[], data_docs_index=None)
    assert gate([identical, rejected]) == (["fp32+int8_static"], {"pruned90": ["test AUC 0.5 < ..."]})
    assert gate([identical.to_dict(), rejected.to_dict()]) == gate([identical, rejected])  # e.g. from XCom
    with pytest.raises(ValueError, match="two verdicts"):
        gate([identical, identical])


def test_cli(data, gx_root, tmp_path, monkeypatch, capsys):
    split = SimpleNamespace(label=data.labels, frame=data.frame)
    monkeypatch.setattr("recforge.pipeline.parity.gate.load_split", lambda features_dir, name: split)
    np.save(tmp_path / "ref.npy", data.reference.astype(np.float32))
    np.save(tmp_path / "bad.npy", np.full(ROWS, 0.4, dtype=np.float32))
    base = ["--features", str(tmp_path), "--reference", str(tmp_path / "ref.npy"), "--gx-root", str(gx_root)]
    assert main([*base, "--candidate", str(tmp_path / "bad.npy"), "--name", "pruned90",
                 "--config", '{"slice_columns": ["gender"]}']) == 2
    printed = json.loads(capsys.readouterr().out)
    assert printed["passed"] is False and printed["reasons"][0].startswith("test AUC 0.5000 < 0.999 × fp32")
    assert main([*base, "--candidate", str(tmp_path / "missing.npy"), "--name", "x"]) == 1
    assert capsys.readouterr().err.strip().endswith("missing.npy is missing")
    assert main([*base, "--candidate", str(tmp_path / "ref.npy"), "--name", "x", "--config", '{"nope": 1}']) == 1
    assert "unknown key(s) ['nope']" in capsys.readouterr().err


def test_zeroed_torch_model_rejected(gx_root):
    torch = pytest.importorskip("torch")
    import copy

    import recforge.models
    from recforge.contracts.features import example_spec
    from recforge.models.export import example_inputs

    spec = example_spec()
    torch.manual_seed(0)
    model = recforge.models.build_model("logreg", spec).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # spread the random logits out, as a trained model's are
            parameter.copy_(torch.randn_like(parameter))
    inputs = example_inputs(spec, ROWS, seed=1)
    with torch.no_grad():
        reference = model(**inputs).double().numpy()
    labels = (np.random.default_rng(6).random(ROWS) < reference).astype(np.float32)
    sparse = inputs["sparse"].numpy()
    frame = pd.DataFrame({name: sparse[:, k] for k, name in enumerate(spec.sparse_features)})
    split = (labels, frame)

    same = validate_variant("logreg", reference.copy(), reference, split, gx_root=gx_root)
    assert same.passed, same.reasons

    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in zeroed.parameters():
            parameter.zero_()
        damaged = zeroed(**inputs).double().numpy()
    assert np.allclose(damaged, 0.5)
    v = validate_variant("logreg+zeroed", damaged, reference, split, gx_root=gx_root)
    assert not v.passed
    assert v.reasons[0].startswith("test AUC 0.5000 < 0.999 × fp32 ")
    assert v.metrics["ref_auc"] > 0.7
