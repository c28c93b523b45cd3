"""`grpokit report RUN_DIR`: the plots of a run and one self-contained HTML page.

A run directory is either one training run (``metrics.jsonl``, ``config.yaml`` or
``run_config.yaml``, ``summary.json``, perhaps ``alerts.jsonl``) or a pipeline / demo
directory, with one subdirectory per stage and a ``summary.json`` listing the stages. The
report has one section per run or stage with its plots (:data:`grpokit.monitoring.plots.PLOTS`;
a plot whose metrics were never logged is named as skipped), its summary and its config;
then the alerts and the resolved run config. The PNGs are written next to the page and also
embedded in it as data URIs, so ``report.html`` can be mailed or archived alone. Config
values under keys that end like credentials (``key``, ``token``, ``secret``, ``password``,
``webhook_url``; not ``*_env`` keys, which only name an environment variable) and passwords
inside URLs are shown as ``***``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from grpokit.errors import RunFilesError
from grpokit.monitoring.plots import PLOTS, plot_png, stage_eval_png

__all__ = ["redact", "load_jsonl", "find_runs", "write_report"]

# keys whose values are credentials (a webhook URL carries one); *_env keys only NAME a variable
SECRET_KEY = re.compile(r"(?:key|token|secret|password|passwd|webhook_url)$", re.IGNORECASE)
URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")  # https://user:pass@host
CONFIG_FILES = ("run_config.yaml", "config.yaml")  # the whole run tree first, else the trainer's section


@dataclass
class RunSection:
    """What the report shows of one training run (one pipeline stage, or the whole run)."""

    name: str
    directory: Path
    kind: str | None = None
    rows: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    summary: dict | None = None


def redact(tree: Any) -> Any:
    """``tree`` with every value under a key ending in key, token, secret, password or
    webhook_url set to ``***``, and the user:password part of URLs too.

    >>> redact({"judge": {"api_key": "sk-1", "model": "m"}, "rewards": [{"Token": 3}], "lr": 1})
    {'judge': {'api_key': '***', 'model': 'm'}, 'rewards': [{'Token': '***'}], 'lr': 1}
    >>> redact({"webhook_timeout": 5.0, "api_key_env": "JUDGE_KEY", "max_tokens": 64})
    {'webhook_timeout': 5.0, 'api_key_env': 'JUDGE_KEY', 'max_tokens': 64}
    >>> redact({"tracking_uri": "https://me:pw@mlflow.local/x"})
    {'tracking_uri': 'https://***@mlflow.local/x'}
    """
    if isinstance(tree, dict):
        return {k: "***" if SECRET_KEY.search(str(k)) else redact(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    if isinstance(tree, str):
        return URL_USERINFO.sub("***@", tree)
    return tree


def load_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a ``.jsonl`` file, one per non-empty line; [] when it does not exist."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise RunFilesError(f"{path}: line {number} is not JSON ({error.msg}); expected one object per line") from None
        if not isinstance(row, dict):
            raise RunFilesError(f"{path}: line {number} is {type(row).__name__}; expected a JSON object")
        rows.append(row)
    return rows


def _load_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunFilesError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def _load_section(name: str, directory: Path, kind: str | None = None) -> RunSection:
    summary = _load_json(directory / "summary.json")
    kind = kind or (summary or {}).get("stage")
    return RunSection(name, directory, kind, load_jsonl(directory / "metrics.jsonl"),
                      load_jsonl(directory / "alerts.jsonl"), summary)


def find_runs(run_dir: Path) -> tuple[list[RunSection], list[dict]]:
    """The report's sections and the pipeline's stages (``{name, type, eval}``; [] for one run).

    A directory with ``metrics.jsonl`` is one run. Otherwise its stages come from
    ``summary.json`` (a finished pipeline), else from ``run_config.yaml``'s
    ``pipeline.stages`` and ``pipeline_state.json`` (a pipeline still running).
    """
    if (run_dir / "metrics.jsonl").is_file():
        return [_load_section(run_dir.name, run_dir)], []
    stages = ((_load_json(run_dir / "summary.json") or {}).get("stages") or _stages_in_progress(run_dir))
    sections = [_load_section(s["name"], run_dir / s["name"], s.get("type"))
                for s in stages if (run_dir / s["name"]).is_dir()]
    if not sections:
        raise RunFilesError(f"{run_dir}: no metrics.jsonl and no pipeline stages (summary.json 'stages' or "
                         f"run_config.yaml 'pipeline.stages'); expected a training run or pipeline directory")
    return sections, stages


def _stages_in_progress(run_dir: Path) -> list[dict]:
    """Configured stages with what ``pipeline_state.json`` recorded of the finished ones.

    The stage list is in the pipeline's ``run_config.yaml`` (the demo writes one) and in every
    stage's, which holds the whole run tree.
    """
    configs = [run_dir / "run_config.yaml", *sorted(run_dir.glob("*/run_config.yaml"))]
    trees = (_load_yaml(path) for path in configs)
    configured = next((t["pipeline"]["stages"] for t in trees
                       if isinstance(t, dict) and (t.get("pipeline") or {}).get("stages")), [])
    finished = _load_json(run_dir / "pipeline_state.json") or {}
    return [{"name": s["name"], "type": s.get("type"), "eval": (finished.get(s["name"]) or {}).get("eval")}
            for s in configured if isinstance(s, dict) and "name" in s]


def _load_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RunFilesError(f"{path}: not valid YAML ({error})") from None


def _config_text(directory: Path) -> tuple[Path, str] | None:
    """(path, redacted YAML) of the directory's run config; None when it has none."""
    for name in CONFIG_FILES:
        tree = _load_yaml(directory / name)
        if tree is not None:
            return directory / name, yaml.safe_dump(redact(tree), sort_keys=False)
    return None


# --------------------------------------------------------------------------------- HTML


def _format(value: Any) -> str:
    """A table cell: floats to 4 significant digits, containers as compact JSON."""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "" if value is None else str(value)


def _table(rows: list[dict], css_class: str = "") -> str:
    """An HTML table whose columns are the keys of ``rows`` in order of first appearance."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_format(row.get(c)))}</td>" for c in columns) + "</tr>"
                   for row in rows)
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _key_values(mapping: dict) -> str:
    return _table([{"key": k, "value": v} for k, v in mapping.items()], "key-values")


def _figure(png: bytes, title: str, file_name: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
            f"<figcaption>{html.escape(title)} ({html.escape(file_name)})</figcaption></figure>")


def _slug(name: str) -> str:
    """``name`` safe for an HTML id and a file name.

    >>> _slug("grpo 2/rm")
    'grpo-2-rm'
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def _anchor(name: str) -> str:
    return "section-" + _slug(name)


def _section_html(section: RunSection, plots_dir: Path) -> str:
    """One run's plots (PNG files written to ``plots_dir``), skipped plots, summary and config."""
    figures, skipped = [], []
    for spec in (s for s in PLOTS if s.applies_to(section.kind)):
        png = plot_png(spec, section.rows)
        if png is None:
            if not spec.optional:
                skipped.append(spec.title)
            continue
        file_name = f"{_slug(section.name)}-{spec.name}.png"
        (plots_dir / file_name).write_bytes(png)
        figures.append(_figure(png, spec.title, file_name))
    kind = f" ({html.escape(section.kind)})" if section.kind else ""
    parts = [f'<section id="{_anchor(section.name)}" class="run">',
             f"<h2>{html.escape(section.name)}{kind}</h2>",
             f"<p>{len(section.rows)} logged steps in <code>{html.escape(str(section.directory))}</code></p>"]
    parts.append(f'<div class="plots">{"".join(figures)}</div>' if figures else
                 '<p class="skipped">No plots: this run logged no metrics.jsonl rows.</p>')
    if skipped and section.rows:
        parts.append(f'<p class="skipped">Not plotted (their metrics are absent from metrics.jsonl): '
                     f'{html.escape(", ".join(skipped))}.</p>')
    if section.summary:
        parts.append(f"<h3>Summary</h3>{_key_values(section.summary)}")
    config = _config_text(section.directory)
    if config:
        parts.append(f"<details><summary>{html.escape(config[0].name)}</summary>"
                     f"<pre>{html.escape(config[1])}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def _summary_html(run_dir: Path, stages: list[dict], plots_dir: Path) -> str:
    """The pipeline's per-stage evaluation table and chart, and the top-level summary scalars."""
    rows = [{"stage": s["name"], "type": s.get("type"), **(s.get("eval") or {})} for s in stages]
    parts = ['<section id="summary"><h2>Summary</h2>', f"<h3>Held-out evaluation per stage</h3>{_table(rows, 'eval')}"]
    png = stage_eval_png(stages)
    if png is not None:
        (plots_dir / "stages-eval.png").write_bytes(png)
        parts.append(_figure(png, "Held-out evaluation by stage", "stages-eval.png"))
    else:
        parts.append('<p class="skipped">Held-out evaluation chart skipped: no stage has been evaluated yet.</p>')
    scalars = {k: v for k, v in (_load_json(run_dir / "summary.json") or {}).items() if k != "stages"}
    if scalars:
        parts.append(_key_values(scalars))
    parts.append("</section>")
    return "\n".join(parts)


def _alerts_html(run_dir: Path, sections: list[RunSection], pipeline: bool) -> str:
    rows = [{"run": "(pipeline)", **a} for a in load_jsonl(run_dir / "alerts.jsonl")] if pipeline else []
    for section in sections:
        rows += [{"run": section.name, **a} if pipeline else a for a in section.alerts]
    body = _table(rows, "alerts") if rows else "<p>No alerts were raised.</p>"
    return f'<section id="alerts"><h2>Alerts</h2>{body}</section>'


def _config_html(run_dir: Path, sections: list[RunSection]) -> str:
    """The run directory's config, else (a pipeline run outside the demo) its first stage's."""
    config = _config_text(run_dir) or _config_text(sections[0].directory)
    body = (f"<p><code>{html.escape(str(config[0].relative_to(run_dir)))}</code>, with credential-like "
            f"values shown as ***</p>"
            f"<pre>{html.escape(config[1])}</pre>" if config else "<p>No run_config.yaml or config.yaml found.</p>")
    return f'<section id="config"><h2>Resolved config</h2>{body}</section>'


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1320px; padding: 0 1rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2.2rem; }
nav a { margin-right: 0.8rem; }
.plots { display: flex; flex-wrap: wrap; gap: 0.8rem; }
figure { margin: 0; } figure img { width: 640px; max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.8rem; color: #666; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.6rem 0; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.skipped { color: #8a6d00; }
pre { background: #f7f7f7; padding: 0.8rem; overflow-x: auto; font-size: 0.8rem; }
"""


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``); return its path.

    The PNGs also go to ``report_plots/`` next to the page, one per run and plot
    (``<run>-<plot>.png``, plus ``stages-eval.png`` for a pipeline).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFilesError(f"report: {run_dir} is not a directory; expected a training run or pipeline directory")
    out = Path(out) if out is not None else run_dir / "report.html"
    plots_dir = out.parent / "report_plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    for stale in plots_dir.glob("*.png"):  # from an earlier report of a run that has changed since
        stale.unlink()
    sections, stages = find_runs(run_dir)
    pipeline = bool(stages)
    title = f"grpokit report: {run_dir.resolve().name}"
    nav = [*((("summary", "Summary"),) if pipeline else ()), *((_anchor(s.name), s.name) for s in sections),
           ("alerts", "Alerts"), ("config", "Config")]
    page = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{'Pipeline' if pipeline else 'Training run'} <code>{html.escape(str(run_dir.resolve()))}</code>; "
        f"report written {datetime.now().strftime('%Y-%m-%d %H:%M')}.</p>",
        "<nav>" + "".join(f'<a href="#{a}">{html.escape(label)}</a>' for a, label in nav) + "</nav>",
        *([_summary_html(run_dir, stages, plots_dir)] if pipeline else []),
        *(_section_html(section, plots_dir) for section in sections),
        _alerts_html(run_dir, sections, pipeline),
        _config_html(run_dir, sections),
        "</body></html>",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(page))
    return out
