"""Rejection sampling (DeepSeek-R1 stage 3): sample k completions per prompt, keep the good ones.

For each prompt the policy samples ``num_samples`` completions. A completion is kept when it
is not empty and

1. every verifier passes: each reward named in ``min_rewards`` is at least its threshold (a
   reward that returns None, "not applicable", does not block);
2. the optional LLM judge gives it at least ``judge_min_score`` (asked only about completions
   that passed the verifiers; a completion it could not score is kept under ``on_error: none``
   and rejected under ``zero``, and counted either way);
3. it is not an exact or near duplicate of a completion already kept for that prompt
   (character 3-gram Jaccard similarity ≥ ``near_duplicate_threshold``);
4. fewer than ``max_per_prompt`` completions of that prompt were kept before it.

The kept rows form an SFT set (``sft.jsonl``: ``prompt``, ``completion``, the dataset's other
columns, and ``provenance``: source model, sample index, rewards, judge verdict) and
``summary.json`` reports acceptance overall, per rejection reason, and per prompt difficulty.

With a judge and a ``judge_label`` (what the judge should say, known to the task but never
shown to the judge), the summary adds the judge's agreement on the completions it judged (the
policy's own samples; the demo's judge was trained on a teacher's completions): precision (approved and truly acceptable / approved) and recall
(approved and truly acceptable / truly acceptable); and it counts the unacceptable share of the
kept set with and without the judge, the same selection run twice.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from grpokit.config import SampleConfig
from grpokit.data import extra_columns, validate_prompt_rows
from grpokit.errors import ConfigError, JudgeError
from grpokit.evaluation.evaluate import sample_texts
from grpokit.models import load_model, load_tokenizer, pick_device
from grpokit.progress import ProgressReport
from grpokit.rewards import RewardBatch, resolve_reward, reward_name, score_completions
from grpokit.sampling.sampler import SamplingParams
from grpokit.serving.model_server import check_servable
from grpokit.monitoring.summary import write_summary


JUDGE_CHUNK = 64  # completions per judge batch (the progress bar's step)


def shingles(text: str, n: int = 3) -> set[str]:
    """Character n-grams of the whitespace-normalised, lower-cased text.

    >>> sorted(shingles("Abc d"))
    ['abc', 'bc ', 'c d']
    """
    text = " ".join(text.lower().split())
    return {text[i : i + n] for i in range(max(1, len(text) - n + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets).

    >>> jaccard({"ab", "bc"}, {"bc", "cd"})
    0.3333333333333333
    """
    return len(a & b) / len(a | b) if a or b else 1.0


def passes_verifiers(rewards: dict[str, float | None], min_rewards: dict[str, float]) -> bool:
    """Every thresholded reward is at least its minimum; None (not applicable) passes.

    >>> passes_verifiers({"format": 1.0, "correctness": None}, {"format": 1.0, "correctness": 1.0})
    True
    >>> passes_verifiers({"format": 0.0}, {"format": 1.0})
    False
    """
    return all(rewards[name] is None or rewards[name] >= low for name, low in min_rewards.items())


def difficulty_bucket(pass_rate: float) -> str:
    """Name a prompt's difficulty by the share of its samples that passed the verifiers.

    >>> difficulty_bucket(0.0), difficulty_bucket(0.5), difficulty_bucket(0.9)
    ('hard (pass < 1/3)', 'medium', 'easy (pass >= 2/3)')
    """
    if pass_rate < 1 / 3:
        return "hard (pass < 1/3)"
    return "easy (pass >= 2/3)" if pass_rate >= 2 / 3 else "medium"


def select(candidates: list[dict], cfg: SampleConfig) -> tuple[list[dict], Counter]:
    """Apply the four rules of the module docstring to one prompt's scored candidates.

    Each candidate has ``completion``, ``rewards`` and (when a judge ran) ``judge``.
    Returns the kept candidates and a count of rejections by reason.

    >>> cfg = SampleConfig(min_rewards={"ok": 1.0}, max_per_prompt=2)
    >>> c = lambda text, ok: {"completion": text, "rewards": {"ok": ok}}
    >>> kept, why = select([c("a=1,b=2", 1.0), c("a=1,b=2", 1.0), c("x", 0.0),
    ...                     c("q=9,r=7", 1.0), c("s=4,t=5", 1.0)], cfg)
    >>> [k["completion"] for k in kept], dict(why)
    (['a=1,b=2', 'q=9,r=7'], {'duplicate': 1, 'verifier': 1, 'cap': 1})
    """
    kept, seen, reasons = [], [], Counter()
    for cand in candidates:
        if not cand["completion"].strip():
            reasons["empty"] += 1
        elif not passes_verifiers(cand["rewards"], cfg.min_rewards):
            reasons["verifier"] += 1
        elif cand.get("judge") is not None and not _judge_passes(cand["judge"], cfg):
            reasons["judge"] += 1
        elif any(jaccard(shingles(cand["completion"]), s) >= cfg.near_duplicate_threshold for s in seen):
            reasons["duplicate"] += 1
        elif len(kept) >= cfg.max_per_prompt:
            reasons["cap"] += 1
        else:
            kept.append(cand)
            seen.append(shingles(cand["completion"]))
    return kept, reasons


def _judge_passes(verdict: dict, cfg: SampleConfig) -> bool:
    """Approved by the judge; an unscored completion passes only under ``on_error: none``."""
    if verdict.get("score") is None:
        return cfg.judge is not None and cfg.judge.on_error == "none"
    return verdict["score"] >= cfg.judge_min_score


def agreement(approved: list[bool], acceptable: list[bool]) -> dict:
    """The judge's precision and recall against the true labels (approval is the positive call).

    >>> agreement([True, True, False, False], [True, False, True, False])
    {'judged': 4, 'approved': 2, 'acceptable': 2, 'precision': 0.5, 'recall': 0.5, 'accuracy': 0.5}
    """
    hits = sum(a and t for a, t in zip(approved, acceptable))
    return {"judged": len(approved), "approved": sum(approved), "acceptable": sum(acceptable),
            "precision": hits / sum(approved) if any(approved) else 0.0,
            "recall": hits / sum(acceptable) if any(acceptable) else 0.0,
            "accuracy": sum(a == t for a, t in zip(approved, acceptable)) / len(approved) if approved else 0.0}


def check_thresholds(min_rewards: dict[str, float], names: list[str]) -> None:
    """Every thresholded reward must be one of the configured reward functions."""
    unknown = sorted(set(min_rewards) - set(names))
    if unknown:
        raise ConfigError(f"sample.min_rewards: {', '.join(unknown)} not among the configured rewards "
                         f"({', '.join(names)}); add them to 'rewards' or remove the threshold")


def rejection_sample(model_dir: str | Path, rows: list[dict], reward_specs: list, cfg: SampleConfig,
                     show_progress: bool = True, judge_label=None) -> dict:
    """Sample, verify, judge, deduplicate and cap; write ``sft.jsonl`` and ``summary.json``.

    ``judge_label(completion, row) -> bool`` is the truth the judge is measured against (see the
    module docstring). Returns the summary (also written to ``cfg.output_dir/summary.json``).
    """
    rows = validate_prompt_rows(rows, "sample dataset")[: cfg.num_prompts]
    funcs = [resolve_reward(spec) for spec in reward_specs]
    check_thresholds(cfg.min_rewards, [reward_name(f) for f in funcs])
    if cfg.judge and cfg.judge.serve:
        check_servable(cfg.judge.serve)  # before the sampling, not after it
    device = pick_device(cfg.device)
    model, tokenizer = load_model(model_dir, device), load_tokenizer(model_dir)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    params = SamplingParams(cfg.max_completion_length, cfg.temperature, cfg.top_p)
    k = cfg.num_samples
    with ProgressReport("sample", len(rows), status=f"k={k}", unit="prompt", disable=not show_progress) as bar:
        texts, ids = sample_texts(model, tokenizer, [r["prompt"] for r in rows], k, params,
                                  cfg.batch_prompts, generator, lambda n: bar.update(advance=n))
    columns = {c: [r.get(c) for r in rows] for c in extra_columns(rows)}
    scores = score_completions(funcs, [r["prompt"] for r in rows], texts, ids, columns)
    candidates = _candidates(rows, texts, scores, k)
    judging = _attach_verdicts(rows, candidates, cfg, show_progress) if cfg.judge else {}
    if cfg.judge and judge_label is not None:
        judging.update(_judge_quality(rows, candidates, cfg, judge_label))
    return _write(model_dir, rows, candidates, cfg, judging)


def _candidates(rows: list[dict], texts: list[str], scores: RewardBatch, k: int) -> list[list[dict]]:
    """Per prompt, its k completions with their per-function rewards (None for NaN)."""
    per_func = scores.per_func.tolist()
    return [[{"completion": texts[i * k + j], "sample_index": j,
              "rewards": {name: (None if v != v else v) for name, v in zip(scores.names, per_func[i * k + j])}}
             for j in range(k)] for i in range(len(rows))]


def _attach_verdicts(rows: list[dict], candidates: list[list[dict]], cfg: SampleConfig,
                     show_progress: bool) -> dict:
    """Ask the judge about every completion that passed the verifiers (identical ones once);
    return what judging took: requests, errors, seconds."""
    from grpokit.rewards.judge import LLMJudge

    passing = [(row, c) for row, group in zip(rows, candidates) for c in group
               if passes_verifiers(c["rewards"], cfg.min_rewards)]
    started = time.perf_counter()
    if not passing:
        return {"asked": 0, "errors": 0, "seconds": 0.0}
    with LLMJudge(cfg.judge, server_log=Path(cfg.output_dir) / "judge_server.log") as judge, \
            ProgressReport("judge", len(passing), status=judge.base_url, unit="completion",
                           disable=not show_progress) as bar:
        verdicts = []
        for start in range(0, len(passing), JUDGE_CHUNK):
            chunk = passing[start : start + JUDGE_CHUNK]
            verdicts += judge.verdicts([row["prompt"] for row, _ in chunk], [c["completion"] for _, c in chunk],
                                       answer=[row.get("answer") for row, _ in chunk])
            bar.update(advance=len(chunk))
    for (_, cand), verdict in zip(passing, verdicts):
        cand["judge"] = {"score": verdict["score"], "error": verdict["error"]}
    errors = [v["error"] for v in verdicts if v["error"] is not None]
    if errors and cfg.judge.on_error == "raise":
        raise JudgeError(f"sample.judge: {len(errors)} of {len(verdicts)} completions got no score "
                         f"(on_error: raise); first: {errors[0]}")
    return {"asked": len(verdicts), "errors": len(errors), "first_error": errors[0] if errors else None,
            "seconds": time.perf_counter() - started}


def _judge_quality(rows: list[dict], candidates: list[list[dict]], cfg: SampleConfig, label) -> dict:
    """Agreement with the true labels, and the kept set's unacceptable share with and without
    the judge (see the module docstring)."""
    judged = [(row, c) for row, group in zip(rows, candidates) for c in group
              if c.get("judge") and c["judge"]["score"] is not None]
    quality = {"agreement": agreement([_judge_passes(c["judge"], cfg) for _, c in judged],
                                      [bool(label(c["completion"], row)) for row, c in judged])}
    unjudged = cfg.model_copy(update={"judge": None})
    for name, settings, strip in (("kept_with_judge", cfg, False), ("kept_without_judge", unjudged, True)):
        kept = [(row, c) for row, group in zip(rows, candidates)
                for c in select([_without_verdict(c) for c in group] if strip else group, settings)[0]]
        bad = sum(not label(c["completion"], row) for row, c in kept)
        quality[name] = {"kept": len(kept), "unacceptable": bad, "unacceptable_rate": bad / len(kept) if kept else 0.0}
    return quality


def _without_verdict(candidate: dict) -> dict:
    return {key: value for key, value in candidate.items() if key != "judge"}


def _write(model_dir, rows: list[dict], candidates: list[list[dict]], cfg: SampleConfig, judging: dict) -> dict:
    """Select per prompt, then write sft.jsonl atomically and the acceptance summary."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    reasons, by_difficulty = Counter(), defaultdict(lambda: [0, 0])  # bucket -> [kept, sampled]
    tmp = out / "sft.jsonl.tmp"
    kept_total, prompts_kept = 0, 0
    with tmp.open("w") as f:
        for row, group in zip(rows, candidates):
            kept, why = select(group, cfg)
            reasons.update(why)
            kept_total += len(kept)
            prompts_kept += bool(kept)
            pass_rate = sum(passes_verifiers(c["rewards"], cfg.min_rewards) for c in group) / len(group)
            bucket = str(row.get(cfg.difficulty_column)) if cfg.difficulty_column else difficulty_bucket(pass_rate)
            by_difficulty[bucket][0] += len(kept)
            by_difficulty[bucket][1] += len(group)
            for cand in kept:
                provenance = {"source_model": str(model_dir), "sample_index": cand["sample_index"],
                              "rewards": cand["rewards"], "judge": cand.get("judge")}
                f.write(json.dumps({**row, "completion": cand["completion"], "provenance": provenance}) + "\n")
    os.replace(tmp, out / "sft.jsonl")
    sampled = len(rows) * cfg.num_samples
    summary = {
        "stage": "rejection_sample", "model_dir": str(model_dir), "data_path": str(out / "sft.jsonl"),
        "prompts": len(rows), "sampled": sampled, "kept": kept_total,
        "acceptance_rate": kept_total / sampled,
        "prompts_with_a_kept_sample": prompts_kept,
        "rejected_by": dict(reasons),
        "acceptance_by_difficulty": {b: {"kept": kept, "sampled": n, "rate": kept / n}
                                     for b, (kept, n) in sorted(by_difficulty.items())},
    }
    if cfg.judge:
        summary["judge"] = {"server": cfg.judge.base_url or f"transformers serve {cfg.judge.serve}",
                            "model": cfg.judge.model or cfg.judge.serve, "rejected": reasons.get("judge", 0),
                            "on_error": cfg.judge.on_error, **judging}
    write_summary(out, summary)
    return summary
