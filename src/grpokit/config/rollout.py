"""The ``rollout`` section: which engine samples the policy's completions, and how far sampling
may run ahead of training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from grpokit.config.sections import Section


class RolloutConfig(Section):
    """The rollout engine (docs/rollout_engines.md): grpokit's own sampler, or vLLM in the
    training process or behind a server, synchronous or ``max_staleness`` steps ahead."""

    engine: Literal["native", "vllm"] = "native"
    """'native': grpokit's sampler on the policy itself (shared prompt prefill, preallocated KV
    cache). 'vllm': vLLM (paged attention, continuous batching, CUDA graphs), fed the policy's
    weights after every optimizer step; needs vLLM installed (pip install vllm on CUDA;
    scripts/install_vllm_cpu.sh builds a CPU virtualenv)."""
    vllm_mode: Literal["colocate", "server"] = "colocate"
    """With engine 'vllm' (TRL's key): 'colocate' runs vLLM in the training process and loads the
    new weights in memory; 'server' sends prompts to `grpokit serve-rollouts` at server_url and
    pushes the weights there as a safetensors file in weights_dir."""
    server_url: str | None = None
    """With vllm_mode 'server': the rollout server's root, e.g. http://10.0.0.2:8000."""
    weights_dir: str | None = None
    """With vllm_mode 'server': a directory the trainer and the server both see, where the
    trainer writes the weights after each step (None: /dev/shm, or the system's temp directory
    when there is none; shared memory keeps the transfer off the disk)."""
    request_timeout_s: float = Field(600.0, gt=0)
    """With vllm_mode 'server': seconds a generate or weight-load request may take."""
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    """With vllm_mode 'colocate': the share of the GPU's memory vLLM reserves for its weights and
    KV cache (on CPU, the share of RAM); the rest is the trainer's."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """vLLM's weight dtype with vllm_mode 'colocate' ('auto': bfloat16 when bf16 is set, else
    float32). A server's dtype is its own (serve-rollouts --dtype)."""
    max_model_len: int | None = Field(None, ge=2)
    """vLLM's longest sequence with vllm_mode 'colocate' (None: max_prompt_length +
    max_completion_length, or the model's limit without max_prompt_length); a server's is its
    own (serve-rollouts --max-model-len)."""
    sleep_mode: bool = False
    """With vllm_mode 'colocate' on CUDA: release vLLM's weights and KV cache memory while the
    trainer updates (vLLM's sleep level 1), waking it to load weights and sample."""
    max_staleness: int = Field(0, ge=0)
    """Asynchronous training: the batch of step s is sampled by the policy of step
    max(0, s - max_staleness), so the engine samples the next batches while the trainer updates
    on the current one. 0: synchronous (every batch from the current policy)."""

    @model_validator(mode="after")
    def _server_needs_url(self) -> "RolloutConfig":
        if self.engine == "vllm" and self.vllm_mode == "server" and not self.server_url:
            raise ValueError("vllm_mode 'server' needs server_url (the address "
                             "`grpokit serve-rollouts MODEL` prints, e.g. http://127.0.0.1:8000)")
        return self
