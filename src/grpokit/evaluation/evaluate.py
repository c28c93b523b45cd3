"""Held-out evaluation: sampled pass@1, pass@k, maj@k, greedy accuracy, format rate, length.

Each problem (a row with ``prompt`` and ``answer``) gets ``num_samples`` (k) completions at the
sampling temperature and one greedy completion. A completion is correct when the text in its
``<answer>`` tags matches ``answer``:

- ``pass@1`` — the mean over problems of (correct samples / k): sampled accuracy (R1 §3);
- ``pass@k`` — the unbiased estimator of Chen et al. (2021) with n = k;
- ``maj@k`` — the majority-voted answer of the k samples is correct (self-consistency), answers
  grouped by the same equality as correctness (``12`` and ``12.0`` vote together);
- ``greedy_accuracy`` — the greedy completion is correct;
- ``format_rate`` and ``mean_completion_length`` — over the sampled completions.

With ``tools`` every completion is a multi-turn episode (its messages are what the verifier
reads), and ``cfg.without_tools`` adds ``pass@1_without_tools`` and
``greedy_accuracy_without_tools``: the same model with the tools taken away (the prompts list
none and every call is answered "unknown tool").

When the rows carry a ``harmful`` column (some are harmful requests), the metrics above are
taken on the ordinary rows and :mod:`grpokit.evaluation.safety_metrics` adds ``harmful_compliance`` and
``over_refusal`` (with the task's ``refuses`` / ``is_refusal_answer`` when it has them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from grpokit.agents.episodes import EnvironmentTokens
from grpokit.agents.multi_turn import ToolEnvironment, sample_episodes
from grpokit.agents.tools import ToolBox
from grpokit.config import EvalConfig
from grpokit.data import encode_prompt
from grpokit.evaluation.pass_at_k import maj_at_k, mean_pass_at_k
from grpokit.evaluation.safety_metrics import has_harmful_rows, opens_with_refusal, safety_metrics
from grpokit.progress import ProgressReport
from grpokit.answers import answers_match, extract_answer, is_well_formatted
from grpokit.sampling.sampler import SamplingParams, generate


def sample_texts(model, tokenizer, prompts: list, group_size: int, params: SamplingParams,
                 batch_prompts: int, generator: torch.Generator, on_batch=None, tools: list | None = None):
    """``group_size`` completions (texts, token-id lists) for each prompt, in prompt order; with
    ``tools`` (functions; ``[]`` for none) each is an episode's messages instead of a text."""
    toolbox = ToolBox(tools) if tools is not None else None
    schemas = (toolbox.schemas or None) if toolbox is not None else None
    ids = [encode_prompt(p, tokenizer, f"prompt {i}", schemas) for i, p in enumerate(prompts)]
    environment_tokens = EnvironmentTokens(tokenizer) if toolbox is not None else None
    texts, completion_ids = [], []
    for start in range(0, len(ids), batch_prompts):
        batch = ids[start : start + batch_prompts]
        if toolbox is None:
            rollout = generate(model, batch, group_size, params, tokenizer.eos_token_id, tokenizer.pad_token_id,
                               generator)
            texts += tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
            completion_ids += [row[:n] for row, n in zip(rollout.completion_ids.tolist(),
                                                         rollout.completion_lengths().tolist())]
        else:
            episodes, _, _ = sample_episodes(model, tokenizer, [p for p in batch for _ in range(group_size)],
                                             group_size, params, ToolEnvironment(toolbox), params.max_new_tokens,
                                             params.max_new_tokens, generator, environment_tokens)
            texts += [episode.messages for episode in episodes]
            completion_ids += [episode.ids for episode in episodes]
        if on_batch:
            on_batch(min(batch_prompts, len(ids) - start))
    return texts, completion_ids


def answer_matches(completion: str, row: dict) -> bool:
    """The default verifier: the tagged answer equals the row's ``answer`` (as numbers when both
    parse as numbers).

    >>> answer_matches("<answer>12.0</answer>", {"answer": "12"})
    True
    """
    return answers_match(extract_answer(completion), row["answer"])


Verifier = Callable[[str, dict], bool]  # (completion text, row) -> correct


def score_problems(texts: list, greedy: list, rows: list[dict], k: int, verify: Verifier = answer_matches,
                   well_formatted: Callable = is_well_formatted, answer_of: Callable = extract_answer) -> dict:
    """Aggregate the metrics from k sampled texts per problem and one greedy text each.

    >>> ok, bad = "<reasoning>r</reasoning><answer>3</answer>", "<answer>4</answer>"
    >>> m = score_problems([ok, bad, bad, bad], [ok, bad], [{"answer": "3"}, {"answer": "3"}], k=2)
    >>> m["pass@1"], m["pass@k"], m["maj@k"], m["greedy_accuracy"], m["format_rate"]
    (0.25, 0.5, 0.5, 0.5, 0.25)
    """
    per_problem, majority = [], []
    for i, row in enumerate(rows):
        group = texts[i * k : (i + 1) * k]
        correct = [verify(t, row) for t in group]
        per_problem.append((k, sum(correct)))
        majority.append(maj_at_k([answer_of(t) for t in group], correct, same=answers_match))
    return {
        "pass@1": mean_pass_at_k(per_problem, 1),
        "pass@k": mean_pass_at_k(per_problem, k),
        "maj@k": sum(majority) / len(majority),
        "greedy_accuracy": sum(verify(t, row) for t, row in zip(greedy, rows)) / len(rows),
        "format_rate": sum(map(well_formatted, texts)) / len(texts),
        "k": k,
        "num_problems": len(rows),
    }


def score_with_safety(texts: list, greedy: list, rows: list[dict], k: int, verify: Verifier, checks: dict,
                      task=None) -> dict:
    """:func:`score_problems`, on the ordinary rows alone plus the safety metrics when some rows
    are harmful requests."""
    if not has_harmful_rows(rows):
        return score_problems(texts, greedy, rows, k, verify, **checks)
    ordinary = [i for i, row in enumerate(rows) if not row.get("harmful")]
    metrics = score_problems([texts[i * k + j] for i in ordinary for j in range(k)], [greedy[i] for i in ordinary],
                             [rows[i] for i in ordinary], k, verify, **checks)
    refuses = getattr(task, "refuses", opens_with_refusal)
    return {**metrics, **safety_metrics(texts, rows, k, refuses, getattr(task, "is_refusal_answer", None))}


def evaluate(model, tokenizer, rows: list[dict], cfg: EvalConfig, show_progress: bool = True,
             samples_path: Path | None = None, verify: Verifier = answer_matches, task=None) -> dict:
    """Evaluate ``model`` on ``rows`` (``prompt``, ``answer``, and what ``verify`` reads, such as a
    reasoning-gym entry); optionally write every sample. A ``task`` with ``tools`` is evaluated
    as episodes with them, with its own format check and answer reader."""
    rows = rows[: cfg.num_problems]
    tools = getattr(task, "tools", None)
    checks = dict(well_formatted=task.is_well_formatted, answer_of=task.extract_answer) if tools is not None else {}
    metrics, texts, greedy = _sampled_and_greedy(model, tokenizer, rows, cfg, show_progress, verify, tools, checks,
                                                 task)
    if tools is not None and cfg.without_tools:
        alone, _, _ = _sampled_and_greedy(model, tokenizer, rows, cfg, show_progress, verify, [], checks, task)
        metrics.update({f"{key}_without_tools": alone[key] for key in ("pass@1", "greedy_accuracy")})
    if samples_path is not None:
        write_samples(samples_path, rows, texts, greedy, cfg.num_samples)
    return metrics


def _sampled_and_greedy(model, tokenizer, rows, cfg: EvalConfig, show_progress: bool, verify, tools, checks, task):
    prompts = [r["prompt"] for r in rows]
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(cfg.seed)
    sampled = SamplingParams(cfg.max_completion_length, cfg.temperature, cfg.top_p)
    greedy_params = SamplingParams(cfg.max_completion_length, temperature=0.0)
    label = "" if tools is None or tools else " without tools"
    with ProgressReport(f"eval: sampling{label}", len(rows), status=f"k={cfg.num_samples}", unit="problem",
                        disable=not show_progress) as bar:
        texts, completion_ids = sample_texts(model, tokenizer, prompts, cfg.num_samples, sampled,
                                             cfg.batch_prompts, generator, lambda n: bar.update(advance=n), tools)
    with ProgressReport(f"eval: greedy{label}", len(rows), unit="problem", disable=not show_progress) as bar:
        greedy, _ = sample_texts(model, tokenizer, prompts, 1, greedy_params,
                                 cfg.batch_prompts, generator, lambda n: bar.update(advance=n), tools)
    metrics = score_with_safety(texts, greedy, rows, cfg.num_samples, verify, checks, task)
    metrics["mean_completion_length"] = sum(map(len, completion_ids)) / len(completion_ids)
    return metrics, texts, greedy


def write_samples(path: Path, rows: list[dict], texts: list[str], greedy: list[str], k: int) -> None:
    """One JSON line per problem: prompt, answer, the k samples and the greedy completion."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i, row in enumerate(rows):
            record = {"prompt": row["prompt"], "answer": row["answer"],
                      "samples": texts[i * k : (i + 1) * k], "greedy": greedy[i]}
            f.write(json.dumps(record) + "\n")
