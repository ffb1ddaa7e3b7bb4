"""The MLflow UI as the data scientist sees it, in headless Chromium against a real MLflow server (the
``mlflow_server`` fixture) holding a small real nightly chain (tests/ui/mlflow_content.py): the nightly experiment
opens on its runs table, a variant's ``latency_ms_b256`` is the number of the compression summary and the Pareto
plot, and the registry page shows the aliases with their target names. Screenshots of each page are test
artifacts (tmp folder; also ``$RECFORGE_UI_SCREENSHOTS`` when set)."""

from __future__ import annotations

import json
import re
import time

import pytest

from recforge.contracts import tags
from recforge.pipeline.training.tracking import LATENCY_B256, experiment_url, registry_url, run_url, ui_links
from tests.ui.mlflow_browser import Screenshots, close_assistant, start_chromium, wait_for_text
from tests.ui.mlflow_content import DAY, NightlyContent, build_nightly, environment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nightly(mlflow_server, tmp_path_factory) -> tuple[str, NightlyContent]:
    root = tmp_path_factory.mktemp("ui_nightly")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in environment(root, mlflow_server).items():
            mp.setenv(key, value)
        import mlflow

        mlflow.set_tracking_uri(mlflow_server)
        yield mlflow_server, build_nightly(root)


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Screenshots:
    return Screenshots(tmp_path_factory.mktemp("screenshots"))


def test_nightly_experiment_opens_on_its_runs(nightly, browser, screenshots):
    import mlflow

    from recforge.pipeline.training import nightly as nightly_cli

    url, content = nightly
    experiment = mlflow.MlflowClient(url).get_experiment(content.experiment_id)
    assert experiment.tags[tags.EXPERIMENT_KIND] == tags.MODEL_TRAINING_EXPERIMENT
    report = nightly_cli.report(DAY.isoformat())
    link = experiment_url(url, content.experiment_id)
    assert link in report  # the link `make run` prints is the one opened here
    assert f"{experiment.name}: {link}" in ui_links(url)  # and the one `make ui` prints
    assert "beats baseline" in report and "— (the baseline)" in report and "None" not in report
    assert "Data checks: **warning**" in report and "expect_table_row_count_to_be_between" in report

    browser.get(link)
    text = wait_for_text(browser, f"nightly-{DAY.isoformat()}", "Run Name")
    close_assistant(browser)
    assert "/runs" in browser.current_url and "overview" not in browser.current_url
    assert "Token Usage" not in text and "Traces" not in text.split("Run Name")[1]  # not the GenAI overview
    assert "dags/nightly_retrain.py" in text  # the parent run's source
    expander = "button[data-component-id*='runnamecellrenderer']"  # the "+" of a run with child runs
    for level in range(2):  # nightly -> its families -> dlrm's variants
        buttons = browser.find_elements("css selector", expander)
        assert len(buttons) > level, f"no child runs to expand at level {level}"
        buttons[level].click()
        time.sleep(1.0)
    wait_for_text(browser, "logreg", "dlrm/fp32", "dlrm/fp32+int8_dynamic")
    screenshots.save(browser, "mlflow_nightly_runs.png")


def test_bare_experiment_link_is_why_links_carry_the_view(nightly, browser, screenshots):
    """Why every RecForge link carries ?workflowType=machine_learning: MLflow 3.17's UI takes the view from the
    browser (link parameter, else local storage, else GenAI), not from the experiment's kind tag
    (recforge.pipeline.training.tracking's docstring). When this fails, MLflow reads the tag again and the
    parameter can go."""
    url, content = nightly
    browser.get(f"{url}/#/experiments/{content.experiment_id}")
    browser.execute_script("window.localStorage.clear()")  # a browser that never chose a view
    browser.refresh()
    deadline = time.monotonic() + 60
    while "workflowType=" not in browser.current_url and time.monotonic() < deadline:
        time.sleep(0.5)  # the UI redirects a bare experiment link to the default tab of the view it chose
    assert "workflowType=genai" in browser.current_url, browser.current_url
    screenshots.save(browser, "mlflow_bare_experiment_link.png")
    browser.get(experiment_url(url, content.experiment_id))  # the printed link, in that same browser
    wait_for_text(browser, f"nightly-{DAY.isoformat()}", "Run Name")
    assert "workflowType=machine_learning" in browser.current_url


def test_variant_latency_metric_is_the_summary_and_plot_value(nightly, browser, screenshots):
    import mlflow

    url, content = nightly
    summary = content.compression_summary
    client = mlflow.MlflowClient(url)
    profile_summary = json.load(open(client.download_artifacts(content.candidate_run_id, "profile/summary.json")))
    plotted = {v["name"]: v["latency_ms_b256"] for v in profile_summary["variants"]}
    # the fastest variant the Pareto plot shows (the UI content profiles only some variants)
    fastest = min((v for v in summary["variants"] if v["latency_ms_b256"] is not None and v["variant"] in plotted),
                  key=lambda v: v["latency_ms_b256"])
    run_id = content.variant_runs[fastest["variant"]]
    # the run, summary.md and the Pareto plot's numbers (profile/summary.json's variants) are one measurement
    assert client.get_run(run_id).data.metrics[LATENCY_B256] == fastest["latency_ms_b256"]
    table = open(client.download_artifacts(content.candidate_run_id, "compression/summary.md")).read()
    row = next(line for line in table.splitlines() if line.startswith(f"| {fastest['variant']} |"))
    assert f"| {fastest['latency_ms_b256']:.3f} |" in row
    for variant in summary["variants"]:  # every plotted variant: the plot's value is the summary's
        if variant["variant"] in plotted:
            assert plotted[variant["variant"]] == variant["latency_ms_b256"], variant["variant"]

    browser.get(run_url(url, content.experiment_id, run_id))
    text = wait_for_text(browser, f"dlrm/{fastest['variant']}", LATENCY_B256, "Description")
    close_assistant(browser)
    shown = re.search(rf"{re.escape(LATENCY_B256)}\s+([0-9.eE+-]+)", text)
    assert shown, text[:2000]
    assert float(shown.group(1)) == pytest.approx(fastest["latency_ms_b256"], rel=1e-9)
    assert f"Variant {fastest['variant']} of dlrm" in text  # the run's description
    search = browser.find_elements("css selector", "input[placeholder='Search metrics']")
    if search:  # the screenshot shows the latency row
        search[0].send_keys("latency")
        wait_for_text(browser, LATENCY_B256)
    screenshots.save(browser, "mlflow_variant_run.png")

    browser.get(run_url(url, content.experiment_id, content.candidate_run_id).replace(
        "?", "/artifacts/profile/pareto.png?"))
    wait_for_text(browser, "pareto.png")
    browser.implicitly_wait(0)
    images = [img for img in browser.find_elements("tag name", "img")
              if browser.execute_script("return arguments[0].naturalWidth", img) > 600]
    assert images, "the Pareto plot did not load in the artifact viewer"
    screenshots.save(browser, "mlflow_pareto_plot.png")


def test_registry_page_shows_aliases_with_target_names(nightly, browser, screenshots):
    url, content = nightly
    champion = content.registered["targets"]["cpu-onnxruntime"]
    browser.get(registry_url(url, content.model))
    text = wait_for_text(browser, "champion-cpu-onnxruntime", "Alias history", "Version 1")
    close_assistant(browser)
    # <target> is shown, not swallowed as an HTML tag ("Aliases champion- (served)" before)
    assert "champion-<target>" in text and "previous-<target>" in text
    assert re.search(rf"champion-cpu-onnxruntime\s+v{champion['version']}", text)
    # the alias history as a table for a person: time, alias, from, to, action, reason
    assert re.search(r"time \(UTC\)\s+alias\s+from\s+to\s+action\s+reason", text), text[:2000]
    assert re.search(rf"champion-cpu-onnxruntime\s+—\s+v{champion['version']}\s+promote", text), text[:2000]
    screenshots.save(browser, "mlflow_registry.png")


def test_model_version_page_shows_its_schema(nightly, browser, screenshots):
    """The version's source is an MLflow Model with the ONNX graph's signature: the version page shows its
    input/output tensors (and the fleet still gets the measured ONNX file from it)."""
    import mlflow

    url, content = nightly
    version = content.registered["targets"]["cpu-onnxruntime"]["version"]
    signature = mlflow.models.get_model_info(f"models:/{content.model}/{version}").signature
    inputs = [spec.name for spec in signature.inputs.inputs]
    outputs = [spec.name for spec in signature.outputs.inputs]
    assert inputs and outputs
    browser.get(registry_url(url, content.model, version))
    # the schema table's rows are collapsed: "Inputs (n)" and "Outputs (n)", each opening on a click
    wait_for_text(browser, f"Version {version}", f"Inputs ({len(inputs)})", f"Outputs ({len(outputs)})")
    close_assistant(browser)
    for side in ("Inputs", "Outputs"):
        row = browser.find_element("xpath", f"//*[starts-with(normalize-space(text()), '{side} (')]")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
        row.click()
    text = wait_for_text(browser, *inputs, *outputs)
    schema = text[text.rindex("Schema"):]
    for name in inputs + outputs:
        assert re.search(rf"^{re.escape(name)}\b.*\n*Tensor \(dtype: ", schema, flags=re.MULTILINE), schema[:1500]
    screenshots.save(browser, "mlflow_model_version_schema.png")


def test_data_docs_render_inside_mlflow(nightly, browser, screenshots):
    import mlflow

    url, content = nightly
    client = mlflow.MlflowClient(url)

    def html_files(path: str) -> list[str]:
        found = []
        for entry in client.list_artifacts(content.parent_run_id, path):
            found += html_files(entry.path) if entry.is_dir else [entry.path] * entry.path.endswith(".html")
        return found

    page = next(p for p in html_files("data_docs/validations"))
    browser.get(run_url(url, content.experiment_id, content.parent_run_id).replace("?", f"/artifacts/{page}?"))
    wait_for_text(browser, page.rsplit("/", 1)[-1])
    frame = None
    for _ in range(60):
        frames = browser.find_elements("css selector", "iframe.mlflow-html-iframe")
        if frames:
            frame = frames[0]
            break
        time.sleep(0.5)
    assert frame is not None, "the HTML artifact viewer did not open"
    browser.switch_to.frame(frame)
    try:
        for _ in range(60):  # the blob page loads nothing from the network: its assets are inline
            state = browser.execute_script(
                "var probe = document.createElement('div'); probe.className = 'd-none';"
                "document.body.appendChild(probe);"
                "return [typeof window.jQuery, window.jQuery && typeof jQuery.fn.collapse,"
                " getComputedStyle(probe).display, document.body.innerText]")
            if state[0] == "function" and len(state[3]) > 200:
                break
            time.sleep(0.5)
        assert state[0] == "function" and state[1] == "function", state[:3]  # jQuery and Bootstrap's JS ran
        assert state[2] == "none", state[:3]  # Bootstrap's CSS applied (its .d-none class hides the probe)
        assert "Expectation Validation Result" in state[3]
    finally:
        browser.switch_to.default_content()
    screenshots.save(browser, "mlflow_data_docs.png")
