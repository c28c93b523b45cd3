"""``grpokit serve-rollouts MODEL``: vLLM behind HTTP for trainers on other processes, GPUs or
machines (``rollout.vllm_mode: server``).

The server holds one ``vllm.LLM`` and answers three routes (JSON):

- ``GET /health``: ``{"status": "ok", "model": ..., "policy_version": v}``;
- ``POST /generate``: ``{"prompt_ids": [[...]], "group_size": G, "seeds": [...], "max_new_tokens",
  "temperature", "top_p", "top_k", "stop_token_id", "policy_version"}`` → ``{"completion_ids",
  "logprobs", "truncated", "policy_version"}``, one seed and one completion per prompt × G; a
  request naming a policy version waits (up to its ``wait_s``) until the server has loaded it;
- ``POST /load_weights``: ``{"path": dir, "policy_version": v}``: the safetensors files in
  ``dir`` (the trainer's, written where both can see it, shared memory on one machine) become
  the weights, loaded in place by vLLM's ``reload_weights``.

The engine core runs in the server's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, unless the
environment sets it): requests are served one at a time anyway, and it starts in seconds
rather than the half minute a spawned engine process takes on CPU. Requests run one at a time, so a weight load never lands in the middle of a generate; several
training ranks may call ``/generate`` concurrently and are served in turn. (One engine holds one
version: ranks that sample asynchronously, each at its own pace, would need one server each.)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pydantic import BaseModel, Field

from grpokit.errors import ConfigError
from grpokit.sampling.sampler import SamplingParams
from grpokit.sampling.vllm_engine import engine_dtype, generate_lists, import_vllm


class GenerateRequest(BaseModel):
    prompt_ids: list[list[int]] = Field(min_length=1)
    group_size: int = Field(ge=1)
    seeds: list[int]
    max_new_tokens: int = Field(ge=1)
    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    top_k: int = Field(ge=0)
    stop_token_id: int
    policy_version: int | None = None
    wait_s: float = Field(600.0, gt=0)


class LoadWeightsRequest(BaseModel):
    path: str
    policy_version: int = Field(ge=0)


def create_app(llm, model: str):
    """The FastAPI app serving ``llm`` (see the module docstring)."""
    from fastapi import FastAPI, HTTPException

    app, loaded = FastAPI(title="grpokit rollout server"), threading.Condition()
    state = {"policy_version": None}  # None: the weights the server started with

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model, "policy_version": state["policy_version"]}

    @app.post("/generate")
    def generate(request: GenerateRequest) -> dict:
        rows = len(request.prompt_ids) * request.group_size
        if len(request.seeds) != rows:
            raise HTTPException(422, f"seeds: expected one per completion ({rows} = {len(request.prompt_ids)} "
                                     f"prompts x group_size {request.group_size}), got {len(request.seeds)}")
        params = SamplingParams(request.max_new_tokens, request.temperature, request.top_p, request.top_k)
        wanted = request.policy_version
        with loaded:
            if wanted is not None and not loaded.wait_for(lambda: state["policy_version"] == wanted, request.wait_s):
                raise HTTPException(409, f"policy_version {wanted} was not loaded within {request.wait_s:.0f} s (the "
                                         f"server has {state['policy_version']}); did rank 0 push its weights?")
            completions, logprobs, truncated = generate_lists(llm, request.prompt_ids, request.group_size, params,
                                                              request.seeds, request.stop_token_id)
            version = state["policy_version"]
        return {"completion_ids": completions, "logprobs": logprobs, "truncated": truncated,
                "policy_version": version}

    @app.post("/load_weights")
    def load_weights(request: LoadWeightsRequest) -> dict:
        if not any(Path(request.path).glob("*.safetensors")):
            raise HTTPException(422, f"path: {request.path} holds no .safetensors file (the server must see the "
                                     f"trainer's rollout.weights_dir)")
        with loaded:
            llm.collective_rpc("reload_weights", kwargs={"weights_path": request.path})
            llm.reset_prefix_cache()
            state["policy_version"] = request.policy_version
            loaded.notify_all()
        return {"policy_version": request.policy_version}

    return app


def serve_rollouts(model: str, host: str, port: int, dtype: str, gpu_memory_utilization: float,
                   max_model_len: int | None, seed: int, announce=print) -> None:
    """Load ``model`` into vLLM and serve it until interrupted."""
    if not (Path(model) / "config.json").is_file():
        raise ConfigError(f"serve-rollouts: {model} is not a model directory (no config.json); expected a "
                          f"directory written by save_pretrained, e.g. a grpokit run's model/")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    vllm = import_vllm()
    import uvicorn

    announce(f"loading {model} into vLLM; then serving at http://{host}:{port} (the trainer's rollout.server_url)")
    llm = vllm.LLM(model=model, dtype=engine_dtype(dtype, bf16=False), gpu_memory_utilization=gpu_memory_utilization,
                   max_model_len=max_model_len, seed=seed, logprobs_mode="processed_logprobs")
    uvicorn.run(create_app(llm, model), host=host, port=port, log_level="warning")
