"""`grpokit pipeline`: the stages of a recipe (e.g. DeepSeek-R1's) run in order.

Each stage is a :class:`grpokit.config.StageSpec`: a type (sft, grpo, ppo, rejection_sample,
rm, judge: SFT of a generative judge on judgements), the model it starts from (``init``: the
previous policy, the base, or a named stage), and run-config overrides for that stage alone. A stage writes to ``output_dir/<name>``; when it
finishes, ``pipeline_state.json`` records its output and held-out evaluation, so starting the
pipeline again skips it. With ``resume`` an unfinished training stage continues from its latest
checkpoint instead of starting over. Policy stages are evaluated on the held-out problems; with
``score_with`` a trained reward model also scores each evaluated stage's held-out samples.

Under torchrun the SFT and GRPO stages run on every process; rank 0 runs the other stages
(rejection sampling, reward model, PPO) and the evaluations alone, and writes the state and
summary, while the other ranks wait for the state file to record the stage.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from grpokit.config import RunConfig, StageSpec, validate
from grpokit.errors import ConfigError, StageStopped
from grpokit.parallel.ranks import local_only, main_first, ranks, setup
from grpokit.recipes.stages import (base_model, resume_point, run_eval, run_grpo, run_judge, run_ppo, run_rm,
                                    run_sample, run_sft)
from grpokit.rewards.judge import close_shared_judges

POLICY_STAGES = ("sft", "grpo", "ppo")
DISTRIBUTED_STAGES = ("sft", "grpo")  # run on every process under torchrun
WAIT_POLL_SECONDS = 2.0


STATE_FILE = "pipeline_state.json"
BASE = "base"  # the starting model's entry in the state, with pipeline.evaluate_base
# stage type -> (runner, the config section whose output_dir the stage owns)
RUNNERS: dict[str, tuple[Callable[..., Path], str]] = {
    "sft": (run_sft, "sft"), "grpo": (run_grpo, "grpo"), "ppo": (run_ppo, "ppo"),
    "rejection_sample": (run_sample, "sample"), "rm": (run_rm, "rm"), "judge": (run_judge, "sft"),
}


def deep_merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in; nested mappings merge, everything else replaces.

    >>> deep_merge({"grpo": {"beta": 0.0, "lr": 1}, "rewards": ["a"]}, {"grpo": {"beta": 0.1}, "rewards": ["b"]})
    {'grpo': {'beta': 0.1, 'lr': 1}, 'rewards': ['b']}
    """
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def substitute(value: Any, outputs: dict[str, str], where: str, later: tuple[str, ...] = ()) -> Any:
    """Replace ``${stage}`` in every string of ``value`` with that finished stage's output; a
    string naming one of the ``later`` stages is left for the stages after it.

    >>> substitute({"path": "${rm}", "w": [1, "x"]}, {"rm": "runs/p/rm/model"}, "stage 'g'")
    {'path': 'runs/p/rm/model', 'w': [1, 'x']}
    >>> substitute("${judge}", {}, "config", later=("judge",))
    '${judge}'
    """
    if isinstance(value, dict):
        return {k: substitute(v, outputs, where, later) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, outputs, where, later) for v in value]
    if isinstance(value, str) and "${" in value:
        for name, output in outputs.items():
            value = value.replace("${" + name + "}", output)
        if any("${" + name + "}" in value for name in later):
            return value
        if "${" in value:
            raise ConfigError(f"pipeline {where}: {value!r} names a stage that has not run before it; "
                             f"finished stages: {', '.join(outputs) or 'none'}")
    return value


def check_stages(stages: list[StageSpec]) -> None:
    """Names unique; ``init``/``data_from`` name earlier stages of the right type."""
    if not stages:
        raise ConfigError("pipeline.stages is empty; list the stages to run (see `grpokit pipeline --help`)")
    seen: dict[str, str] = {}
    for spec in stages:
        if spec.name == BASE:
            raise ConfigError(f"pipeline.stages: {BASE!r} names the starting model; give the stage another name")
        if spec.name in seen:
            raise ConfigError(f"pipeline.stages: two stages are named {spec.name!r}; names must be unique")
        if spec.init not in ("previous", "base") and spec.init not in seen:
            raise ConfigError(f"pipeline stage {spec.name!r}: init={spec.init!r} is not 'previous', 'base' "
                             f"or an earlier stage ({', '.join(seen) or 'none'})")
        if spec.data_from is not None and seen.get(spec.data_from) != "rejection_sample":
            raise ConfigError(f"pipeline stage {spec.name!r}: data_from={spec.data_from!r} must name an "
                             f"earlier rejection_sample stage")
        seen[spec.name] = spec.type


def stage_config(cfg: RunConfig, spec: StageSpec, outputs: dict[str, str], stage_dir: Path) -> RunConfig:
    """The run config a stage sees: overrides merged in, its section writing to ``stage_dir``."""
    later = tuple(stage.name for stage in cfg.pipeline.stages if stage.name not in outputs)
    tree = deep_merge(substitute(cfg.model_dump(), outputs, "the top-level config", later),
                      substitute(spec.overrides, outputs, f"stage {spec.name!r}"))
    tree[RUNNERS[spec.type][1]]["output_dir"] = str(stage_dir)
    if spec.data_from:
        tree["data"] = {**tree["data"], "path": outputs[spec.data_from], "format": "none"}
    return validate(RunConfig, tree, f"pipeline stage {spec.name!r}")


def load_state(output_dir: Path) -> dict[str, dict]:
    """Finished stages: name -> {type, output, eval}."""
    path = output_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def save_state(output_dir: Path, state: dict[str, dict]) -> None:
    """Write the state atomically, so a crash never leaves it half-written."""
    tmp = output_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, output_dir / STATE_FILE)


def run_pipeline(cfg: RunConfig, show_progress: bool = True, announce: Callable[[str], None] = print,
                 resume: bool = False) -> dict:
    """Run every stage not yet finished; return (and write) the summary of all stages. With
    ``resume`` an unfinished stage continues from its latest checkpoint, if it has one."""
    check_stages(cfg.pipeline.stages)
    setup(max(cfg.sft.distributed_timeout, cfg.grpo.distributed_timeout))  # under torchrun
    main = ranks().is_main
    announce = announce if main else (lambda message: None)
    out = Path(cfg.pipeline.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = main_first(lambda: base_model(cfg, out))
    state = load_state(out)
    if cfg.pipeline.evaluate_base and BASE not in state and main:
        with local_only():
            evaluation = run_eval(cfg, base, out / f"eval-{BASE}", show_progress)
        state = {BASE: {"type": BASE, "output": str(base), "eval": evaluation}, **state}
        save_state(out, state)
    policy, total = base, len(cfg.pipeline.stages)
    for number, spec in enumerate(cfg.pipeline.stages, 1):
        if spec.name in state:
            announce(f"stage {number}/{total} {spec.name} ({spec.type}): finished before, skipped")
        elif main or spec.type in DISTRIBUTED_STAGES:
            checkpoint = resume_point(out / spec.name, resume)
            announce(f"stage {number}/{total} {spec.name} ({spec.type})"
                     + (f": resuming from {checkpoint.name}" if checkpoint else ""))
            init = {"previous": policy, "base": base}.get(spec.init) or Path(state[spec.init]["output"])
            finished = run_stage(cfg, spec, state, init, out, show_progress, resume)
            state = finished if main else wait_for_stage(out, spec.name)
        else:
            state = wait_for_stage(out, spec.name)
        if spec.type in POLICY_STAGES:
            policy = Path(state[spec.name]["output"])
    if not main:
        return {"stage": "pipeline", "stages": []}
    with local_only():
        if cfg.pipeline.score_with:
            score_evaluations(cfg, out, state)
        return write_pipeline_summary(out, cfg, state)


def run_stage(cfg: RunConfig, spec: StageSpec, state: dict[str, dict], init: Path, out: Path,
              show_progress: bool, resume: bool) -> dict[str, dict]:
    """Train (or sample) one stage, evaluate it, and record it in the state (rank 0 only);
    return the new state."""
    outputs = {name: done["output"] for name, done in state.items()}
    stage_cfg, started = stage_config(cfg, spec, outputs, out / spec.name), time.perf_counter()
    try:
        with nullcontext() if spec.type in DISTRIBUTED_STAGES else local_only():
            result = RUNNERS[spec.type][0](stage_cfg, init, show_progress, resume)
    finally:
        close_shared_judges()  # a served judge lives as long as its stage
    if not ranks().is_main:
        return state
    halt_if_stopped(out / spec.name, spec.name)
    evaluation = None
    if spec.type in POLICY_STAGES and spec.evaluate:
        with local_only():
            evaluation = run_eval(stage_cfg, result, out / f"eval-{spec.name}", show_progress)
    state = {**state, spec.name: {"type": spec.type, "output": str(result), "eval": evaluation,
                                  "seconds": time.perf_counter() - started}}
    save_state(out, state)
    return state


def wait_for_stage(out: Path, name: str) -> dict[str, dict]:
    """On ranks other than 0: wait until rank 0 records stage ``name`` as finished (if rank 0
    fails instead, torchrun stops this process); return the state."""
    while name not in (state := load_state(out)):
        time.sleep(WAIT_POLL_SECONDS)
    return state


def halt_if_stopped(stage_dir: Path, name: str) -> None:
    """A stage an alert stopped is not finished: stop the pipeline there (it can be resumed)."""
    summary = stage_dir / "summary.json"
    reason = json.loads(summary.read_text()).get("stopped_early") if summary.is_file() else None
    if reason:
        raise StageStopped(f"pipeline stage {name!r} stopped early ({reason}); later stages were not "
                           f"run. Fix the cause, then start the pipeline again with --resume to "
                           f"continue it from its last checkpoint")


def score_evaluations(cfg: RunConfig, out: Path, state: dict[str, dict]) -> None:
    """Add ``reward_model_score``: the reward model's mean score of each stage's held-out samples."""
    from grpokit.rewards.reward_model import RewardModelScorer

    rm_stage = state.get(cfg.pipeline.score_with)
    if rm_stage is None or rm_stage["type"] != "rm":
        raise ConfigError(f"pipeline.score_with={cfg.pipeline.score_with!r} is not a finished rm stage")
    scorer = RewardModelScorer(rm_stage["output"], device=cfg.eval.device)
    for name, done in state.items():
        if not done.get("eval"):
            continue
        records = [json.loads(line) for line in open(out / f"eval-{name}" / "samples.jsonl")]
        prompts = [r["prompt"] for r in records for _ in r["samples"]]
        completions = [s for r in records for s in r["samples"]]
        scores = scorer(prompts, completions)
        valid = [s for s in scores if s is not None]
        done["eval"]["reward_model_score"] = sum(valid) / len(valid)
    save_state(out, state)


def write_pipeline_summary(out: Path, cfg: RunConfig, state: dict[str, dict]) -> dict:
    """``summary.json``: every stage in order with its output and held-out evaluation."""
    from grpokit.monitoring.summary import write_summary

    names = ([BASE] if BASE in state else []) + [spec.name for spec in cfg.pipeline.stages]
    stages = [{"name": name, "type": state[name]["type"], "output": state[name]["output"],
               "eval": state[name]["eval"], "seconds": state[name].get("seconds")} for name in names]
    summary = {"stage": "pipeline", "stages": stages}
    write_summary(out, summary)
    return summary
