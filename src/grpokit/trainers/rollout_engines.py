"""The trainer's rollout engine (``rollout.engine``, ``rollout.vllm_mode``): which one is built,
what it cannot be combined with, and how the policy's weights reach it."""

from __future__ import annotations

import copy

from grpokit.errors import ConfigError
from grpokit.models.inference_weights import policy_weights
from grpokit.sampling.engine import NativeEngine, RolloutEngine


def check_rollout_settings(trainer) -> None:
    """Combinations the rollout engines do not support, as one clear error each."""
    rollout, stage = trainer.args.rollout, trainer.stage
    vllm, asynchronous = rollout.engine == "vllm", rollout.max_staleness > 0
    if not trainer.uses_rollout_engines and (vllm or asynchronous):
        raise ConfigError(f"{stage}: rollout.engine 'vllm' and rollout.max_staleness are GRPO's; {stage} samples "
                          f"with the native engine, synchronously")
    if (vllm or asynchronous) and trainer.agents.replaces_sampler:
        raise ConfigError("tools, environments and rollout functions sample multi-turn episodes with the native "
                          "engine, synchronously: set rollout.engine: native and rollout.max_staleness: 0")
    if asynchronous and trainer.engine.sharded:
        raise ConfigError("rollout.max_staleness > 0 samples in a thread beside training; under distributed: "
                          "fsdp2 both would run collectives at once: use ddp, or max_staleness: 0")
    if asynchronous and rollout.sleep_mode:
        raise ConfigError("rollout.sleep_mode frees vLLM's memory while the trainer updates, but with "
                          "max_staleness > 0 vLLM samples during the update: set one of them")
    if vllm and trainer.engine.sharded:
        raise ConfigError("rollout.engine 'vllm' needs the whole policy on each rank to send its weights; "
                          "use distributed: ddp (FSDP2 shards them)")
    if vllm and rollout.vllm_mode == "colocate" and trainer.ranks.world_size > 1:
        raise ConfigError("rollout.vllm_mode 'colocate' runs one vLLM engine in a single training process; "
                          "under torchrun use vllm_mode: server (every rank asks one `grpokit serve-rollouts`)")
    if asynchronous and vllm and rollout.vllm_mode == "server" and trainer.ranks.world_size > 1:
        raise ConfigError("rollout.max_staleness > 0 with one rollout server under torchrun: each rank would "
                          "sample at its own pace from one engine that holds one policy version; train "
                          "synchronously (max_staleness: 0) or on one process")
    if asynchronous and trainer.args.dynamic_sampling == "refill":
        raise ConfigError("rollout.max_staleness > 0 samples one batch per step ahead of training; "
                          "dynamic_sampling 'refill' draws a varying number of rounds per step: use 'drop' or 'off'")


def build_rollout_engine(trainer) -> RolloutEngine:
    """The engine ``trainer.args.rollout`` names. The native engine samples with the policy
    itself, or with a copy of it under ``max_staleness > 0`` (the policy changes while the
    next batch is sampled)."""
    check_rollout_settings(trainer)
    args, tokenizer = trainer.args, trainer.tokenizer
    rollout = args.rollout
    if rollout.engine == "native":
        own_copy = rollout.max_staleness > 0
        model = copy.deepcopy(trainer.model).eval() if own_copy else trainer.model
        return NativeEngine(model, tokenizer.eos_token_id, tokenizer.pad_token_id, trainer.autocast,
                            trainer.engine.keep_decoding(), holds_own_weights=own_copy)
    if rollout.vllm_mode == "server":
        from grpokit.sampling.rollout_client import RolloutServerClient

        return RolloutServerClient(rollout, tokenizer, pushes_weights=trainer.ranks.is_main)
    from grpokit.sampling.vllm_engine import VLLMColocated

    longest = (args.max_prompt_length + args.max_completion_length if args.max_prompt_length
               else getattr(trainer.model.config, "max_position_embeddings", None))
    return VLLMColocated(trainer.model, tokenizer, trainer.device, rollout, args.bf16, longest, args.seed)


def push_weights(engine: RolloutEngine, model, version: int) -> None:
    """The policy's current weights, ``version`` optimizer steps in, into ``engine``."""
    with policy_weights(model, merged=engine.wants_merged_weights) as weights:
        engine.load_weights(weights, version)


def snapshot_weights(engine: RolloutEngine, model) -> list:
    """A copy of the policy's weights in the form ``engine`` loads, to load later; in host
    memory, so a GPU holds no second copy while it waits."""
    with policy_weights(model, merged=engine.wants_merged_weights) as weights:
        return [(name, tensor.to("cpu", copy=True)) for name, tensor in weights]
