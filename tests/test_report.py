"""`grpokit report`: plots and one self-contained HTML page from a real tiny pipeline run,
opened in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import sync_playwright

from grpokit.config import RunConfig
from grpokit.monitoring.plots import PLOTS, metric_series, plot_png, stage_eval_png
from grpokit.monitoring.report import write_report
from grpokit.recipes.pipeline import run_pipeline

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TINY_PIPELINE = {
    "model": "embedded",
    "data": {"task": "digit_sum", "num_train": 32, "num_test": 3},
    "sft": {"learning_rate": 5e-3, "per_device_train_batch_size": 8, "max_steps": 3, "max_length": 64},
    "grpo": {"learning_rate": 1e-4, "prompts_per_step": 2, "num_generations": 2, "max_steps": 2,
             "max_completion_length": 12,
             # 12-token completions of an untrained model are all truncated: that alert is real
             # but not this test's subject
             "monitor": {"alerts": {"truncation": {"action": "off"}}}},
    "sample": {"num_prompts": 4, "num_samples": 2, "max_completion_length": 12, "min_rewards": {}},
    "eval": {"num_samples": 2, "num_problems": 3, "max_completion_length": 12},
    "pipeline": {"stages": [{"name": "sft", "type": "sft"}, {"name": "grpo", "type": "grpo"},
                            {"name": "sample", "type": "rejection_sample"}]},
}
GRPO_PLOTS = {"reward", "loss", "kl", "entropy", "length", "clip", "time"}  # everything but held-out accuracy
# What the page says about itself once loaded: sections, images as decoded, scripts and stylesheets.
PAGE_FACTS = """() => ({
    title: document.title,
    sections: [...document.querySelectorAll("section")].map(s => s.id),
    images: [...document.images].map(i => ({alt: i.alt, width: i.naturalWidth, height: i.naturalHeight})),
    scripts: document.scripts.length,
    stylesheets: document.querySelectorAll("link").length,
})"""


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, single_thread) -> Path:
    """A finished three-stage pipeline (SFT, GRPO, rejection sampling) on the embedded default."""
    out = tmp_path_factory.mktemp("report") / "pipeline"
    tree = {**TINY_PIPELINE, "pipeline": {**TINY_PIPELINE["pipeline"], "output_dir": str(out)}}
    run_pipeline(RunConfig.model_validate(tree), show_progress=False, announce=lambda line: None)
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module, with a fresh profile."""
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} is missing: run scripts/install_test_deps.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1360, "height": 900})
        yield context
        context.close()


def open_page(browser, html: Path) -> tuple[dict, list[str], str]:
    """Load ``html`` alone in a new tab: (page facts, URLs it requested beyond data: URIs, visible text)."""
    page = browser.new_page()
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(html.as_uri(), wait_until="load")
    facts, text = page.evaluate(PAGE_FACTS), page.inner_text("body")
    page.close()
    return facts, [url for url in requested if not url.startswith("data:")], text


def alone(report: Path, tmp_path: Path) -> Path:
    """A copy of the page in an empty directory, so nothing next to it can be loaded."""
    copy = tmp_path / "alone" / "report.html"
    copy.parent.mkdir()
    shutil.copy(report, copy)
    return copy


@pytest.mark.slow
def test_pipeline_report_is_one_self_contained_page_whose_plots_render(pipeline_dir, browser, tmp_path):
    report = write_report(pipeline_dir)
    assert report == pipeline_dir / "report.html"
    pngs = {p.name for p in (pipeline_dir / "report_plots").glob("*.png")}
    assert pngs == {"stages-eval.png", "sft-loss.png", *(f"grpo-{name}.png" for name in GRPO_PLOTS)}

    page = alone(report, tmp_path)
    facts, requested, text = open_page(browser, page)
    assert facts["title"] == "grpokit report: pipeline"
    assert facts["sections"] == ["summary", "section-sft", "section-grpo", "section-sample", "alerts", "config"]
    assert len(facts["images"]) == len(pngs)
    assert all(image["width"] == 640 and image["height"] == 360 for image in facts["images"])
    assert requested == [page.as_uri()] and facts["scripts"] == facts["stylesheets"] == 0

    summary = json.loads((pipeline_dir / "summary.json").read_text())
    for stage in summary["stages"][:2]:  # the evaluated stages' pass@1 in the table, as 4 significant digits
        assert f"{stage['eval']['pass@1']:.4g}" in text
    # the SFT section names only the plots an SFT run could have (no reward, KL, clip plots)
    assert text.count("Not plotted (their metrics are absent from metrics.jsonl): Held-out accuracy") == 2
    assert "Reward per function, " not in text
    assert "No plots: this run logged no metrics.jsonl rows." in text  # the rejection-sampling stage
    assert "acceptance_rate" in text and "No alerts were raised." in text
    assert "run_config.yaml" in text and "prompts_per_step: 2" in text


def test_a_single_run_directory_is_one_section(pipeline_dir, browser, tmp_path):
    report = write_report(pipeline_dir / "grpo", tmp_path / "out" / "grpo.html")
    assert {p.name for p in (tmp_path / "out" / "report_plots").glob("*.png")} == {
        f"grpo-{name}.png" for name in GRPO_PLOTS}
    facts, requested, text = open_page(browser, report)
    assert facts["sections"] == ["section-grpo", "alerts", "config"]
    assert sorted(image["alt"] for image in facts["images"]) == sorted(
        spec.title for spec in PLOTS if spec.name in GRPO_PLOTS)
    assert all(image["width"] > 0 for image in facts["images"])
    assert "2 logged steps" in text
    assert ("Not plotted (their metrics are absent from metrics.jsonl): Held-out accuracy, Held-out "
            "accuracy against training time." in text)


def test_a_running_pipeline_and_its_alerts(pipeline_dir, browser, tmp_path):
    run = tmp_path / "running"
    shutil.copytree(pipeline_dir, run, ignore=shutil.ignore_patterns("*.safetensors", "report*"))
    (run / "summary.json").unlink()  # still running: stages from a stage's run_config.yaml + pipeline_state.json
    alert = {"rule": "kl", "step": 2, "message": "KL 0.9 > 0.5", "values": {"kl": 0.9}, "action": "warn"}
    (run / "grpo" / "alerts.jsonl").write_text(json.dumps(alert) + "\n")  # as the alert monitor writes it

    facts, _, text = open_page(browser, write_report(run))
    assert facts["sections"] == ["summary", "section-sft", "section-grpo", "section-sample", "alerts", "config"]
    assert all(image["width"] > 0 for image in facts["images"]) and len(facts["images"]) == 9
    assert 'grpo\tkl\t2\tKL 0.9 > 0.5\t{"kl": 0.9}\twarn' in text  # the run, then the alert's fields
    assert "sft/run_config.yaml, with credential-like values shown as ***" in text


def test_credentials_in_the_config_are_not_shown(pipeline_dir, tmp_path):
    run = tmp_path / "demo"
    shutil.copytree(pipeline_dir, run, ignore=shutil.ignore_patterns("*.safetensors", "report*"))
    config = yaml.safe_load((run / "sft" / "run_config.yaml").read_text())
    config["sft"]["monitor"] = {"webhook_url": "https://hooks.local/T0/hook-secret",
                                "mlflow_tracking_uri": "https://me:pw@ml.local"}
    config["rewards"] = [{"name": "judge", "api_key": "sk-123", "model": "m"}]
    (run / "run_config.yaml").write_text(yaml.safe_dump(config))  # as the demo writes it

    html = write_report(run).read_text()
    assert "hook-secret" not in html and "sk-123" not in html and "me:pw" not in html
    assert "webhook_url: &#x27;***&#x27;" in html and "api_key: &#x27;***&#x27;" in html
    assert "https://***@ml.local" in html and "model: m" in html


def test_unreadable_run_directories_are_named(tmp_path):
    with pytest.raises(ValueError, match="no metrics.jsonl and no pipeline stages"):
        write_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "kl": 0.1}\n{"step": 2, "kl"\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON"):
        write_report(tmp_path)
    with pytest.raises(ValueError, match="is not a directory"):
        write_report(tmp_path / "nothing")


def test_plots_exist_only_for_logged_metrics():
    rows = [{"step": 1, "train/loss": 2.0}, {"step": 2, "train/loss": 1.5, "eval/pass@1": 0.25,
                                               "eval/mean_completion_length": 31.0}]
    spec = {s.name: s for s in PLOTS}
    assert plot_png(spec["loss"], rows)[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_png(spec["kl"], rows) is None
    assert metric_series(rows, spec["eval"].keys) == {"eval/pass@1": ([2], [0.25])}  # fractions only
    assert plot_png(spec["eval"], rows)[:4] == b"\x89PNG"
    assert plot_png(spec["time"], [{"step": 1, "time/generate": 0.5, "time/train": 0.25}])[:4] == b"\x89PNG"
    assert stage_eval_png([{"name": "sample", "eval": None}]) is None
