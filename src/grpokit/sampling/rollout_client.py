"""The trainer's side of ``rollout.vllm_mode: server``: prompts to a ``grpokit serve-rollouts``
server, tokens and log-probs back, and the policy's weights pushed after every step.

Weights go as one safetensors file in ``rollout.weights_dir`` (shared memory, ``/dev/shm``, by
default): the trainer writes ``<dir>/grpokit-weights-<host>-<pid>/model.safetensors`` through a
temporary name, then asks the server to load that directory as policy version v (the optimizer
steps behind the weights). Under torchrun every rank sends its own prompts, naming the version
it expects, and only rank 0 writes weights; the server holds a request until it has that
version, so no rank samples with the weights of another step."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch
from safetensors.torch import save_file

from grpokit.errors import RolloutEngineError
from grpokit.sampling.engine import RandomDraw, rollout_from_samples
from grpokit.sampling.sampler import Rollout, SamplingParams


def default_weights_dir() -> Path:
    """``/dev/shm`` when the machine has it (memory, not disk), else the temp directory."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


class RolloutServerClient:
    """A rollout engine that asks the server at ``rollout.server_url``."""

    name = "vllm"
    holds_own_weights = True
    wants_merged_weights = True

    def __init__(self, rollout, tokenizer, pushes_weights: bool):
        self.url = rollout.server_url.rstrip("/")
        self.timeout = rollout.request_timeout_s
        self.stop_token_id, self.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.pushes_weights, self.version = pushes_weights, None
        root = Path(rollout.weights_dir) if rollout.weights_dir else default_weights_dir()
        self.weights_dir = root / f"grpokit-weights-{socket.gethostname()}-{os.getpid()}"
        self.server_model = self._call("GET", "/health")["model"]

    def sample(self, prompt_ids: list[list[int]], group_size: int, params: SamplingParams,
               draw: RandomDraw) -> Rollout:
        seeds = draw.seeds(len(prompt_ids) * group_size)
        body = {"prompt_ids": prompt_ids, "group_size": group_size, "seeds": seeds,
                "max_new_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p,
                "top_k": params.top_k, "stop_token_id": self.stop_token_id, "policy_version": self.version,
                "wait_s": 0.9 * self.timeout}  # the server's answer comes before the socket gives up
        answer = self._call("POST", "/generate", body)
        return rollout_from_samples(prompt_ids, group_size, answer["completion_ids"], answer["logprobs"],
                                    answer["truncated"], self.pad_token_id)

    def load_weights(self, weights, version: int) -> None:
        self.version = version
        if not self.pushes_weights:  # rank 0 pushes them
            return
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        tensors = {name: tensor.detach().to("cpu", copy=False).contiguous() for name, tensor in weights}
        partial = self.weights_dir / "model.safetensors.partial"
        save_file(_untied(tensors), str(partial))
        partial.replace(self.weights_dir / "model.safetensors")
        self._call("POST", "/load_weights", {"path": str(self.weights_dir), "policy_version": self.version})

    def close(self) -> None:
        """Remove the pushed weights (best effort: a shared filesystem may keep files busy)."""
        if self.pushes_weights:
            shutil.rmtree(self.weights_dir, ignore_errors=True)

    def _call(self, method: str, route: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + route, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:1000]
            raise RolloutEngineError(f"rollout server {self.url}{route} answered {error.code}: {detail}") from None
        except (OSError, ValueError) as error:
            raise RolloutEngineError(f"rollout server {self.url}{route}: {error}; is `grpokit serve-rollouts MODEL` "
                                     f"running there (rollout.server_url)?") from None


def _untied(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (a tied LM head); copy the repeats."""
    seen, out = set(), {}
    for name, tensor in tensors.items():
        pointer = tensor.data_ptr()
        out[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out
