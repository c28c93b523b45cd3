"""Estimated GPU memory per rank for GRPO on Qwen2.5-1.5B / 7B: full or LoRA, 1 GPU, DDP or FSDP2.

Nothing is run: the table is arithmetic over the models' shapes, with two inputs measured on
this project's machine and read from ``benchmarks/results``:

- ``ppo_vs_grpo.json``: model state is exactly 16 bytes per trained parameter (fp32 weights 4,
  gradient 4, AdamW moments 8) and 4 per frozen one (GRPO 16Ψ, PPO 36Ψ);
- ``memory.json``: what a count of the tensors autograd keeps per decoder layer misses. At 64M
  the measured peak above baseline, minus the model state present at that moment, is 1.17-1.24x
  the count; the table multiplies counted activations by the largest of these ratios.

Everything else (bf16 weight copies under autocast, KV cache, logits, what FSDP2 gathers) is
counted from the code paths, not measured. DDP and the single process hold everything on each
rank; FSDP2 divides weights, gradients and AdamW state (and the frozen reference) by N, but
not activations, logits, the KV cache or the bf16 casts autocast makes of gathered weights.

Worked example, Qwen2.5-1.5B (Ψ = 1,543,714,304), full fine-tuning, beta > 0, DDP on 8 GPUs,
64 prompts x G = 8 per step, 512-token prompts, 1,024-token completions, micro_batch_size 2:
weights 4Ψ + AdamW 8Ψ + reference 4Ψ + DDP buckets 4Ψ = 20Ψ = 28.8 GiB all the time; the
training forward adds gradients 4Ψ = 5.8 GiB, bf16 casts of the 1.31B decoder-layer matmul
weights 2.4 GiB, activations 1.24 x 3,072 positions x 28 layers x 121,856 B = 12.1 GiB and one
1,024-token logits chunk 1024 x 151,936 x 16 B = 2.3 GiB: 51.4 GiB. Sampling 64 rows x 1,536
positions holds a 3.9 GiB KV cache (keys fp32 after RoPE, values bf16: 43,008 B per token).

    python benchmarks/estimate_memory.py
    python benchmarks/estimate_memory.py --gradient-checkpointing
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
GIB = 2**30
MIB = 2**20
HEAD_CHUNK_TOKENS = 1024  # grpokit.trainers.logprobs: positions per chunk of the fused LM head
BYTES_PER_LOGIT = 16  # fp32 logits, log-softmax, and the entropy's exp and product


@dataclass(frozen=True)
class Arch:
    """A Qwen2/Llama decoder's shape."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = True

    def linears(self) -> list[tuple[int, int]]:
        """(in, out) of each matmul in one decoder layer: q, k, v, o, gate, up, down."""
        h, i = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def layer_params(self) -> int:
        bias = (self.heads + 2 * self.kv_heads) * self.head_dim if self.qkv_bias else 0
        return sum(a * b for a, b in self.linears()) + bias + 2 * self.hidden  # + 2 RMSNorms

    def root_params(self) -> int:
        """Embeddings, LM head (unless tied) and final norm: FSDP2's root group."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def params(self) -> int:
        """Every parameter (Ψ).

        >>> QWEN_1_5B.params(), QWEN_7B.params()
        (1543714304, 7615616512)
        """
        return self.layers * self.layer_params() + self.root_params()

    def lora_params(self, r: int) -> int:
        """LoRA adapters of rank ``r`` on every decoder-layer linear (peft's all-linear: not the head).

        >>> QWEN_1_5B.lora_params(16), QWEN_7B.lora_params(16)  # 1.20 % and 0.53 % of Ψ
        (18464768, 40370176)
        """
        return self.layers * sum(r * (a + b) for a, b in self.linears())

    def matmul_weights(self) -> int:
        """Weights of the decoder-layer matmuls (what autocast casts to bf16)."""
        return self.layers * sum(a * b for a, b in self.linears())


QWEN_1_5B = Arch(1536, 28, 8960, 12, 2, 128, 151936, tied=True)
QWEN_7B = Arch(3584, 28, 18944, 28, 4, 128, 152064, tied=False)
BENCH_64M = Arch(768, 8, 3072, 12, 4, 64, 103, tied=False)  # bench_models.SIZES["64M"], char vocab
EMBEDDED = Arch(128, 4, 384, 4, 2, 32, 103, tied=True, qkv_bias=False)  # the demo's Llama


@dataclass(frozen=True)
class Workload:
    """One GRPO step; ``prompts_per_step`` is global, ``micro_batch_size`` per rank."""

    prompts_per_step: int = 64
    group: int = 8
    prompt_tokens: int = 512
    completion_tokens: int = 1024
    micro_batch_size: int = 2
    beta: float = 0.04
    bf16: bool = True
    lora_r: int = 16
    gradient_checkpointing: bool = False


# bench_memory.py: 4 prompts of 256 tokens x G = 8, 128 tokens, micro_batch_size 16, fp32 on CPU
BENCH_WORK = Workload(4, 8, 256, 128, 16, beta=0.04, bf16=False)


def micro_batch_positions(work: Workload, shared_prefix: bool = True) -> tuple[int, int]:
    """(positions the decoder runs, completion positions) in one full micro-batch, every
    completion at full length: whole groups sharing their prompt when ``micro_batch_size >= G``
    (grpokit.trainers.micro_batches), else (under checkpointing, and in FSDP2's model forward) one prompt per row.

    >>> micro_batch_positions(BENCH_WORK)  # 2 prompts + 16 completions
    (2560, 2048)
    """
    rows, tp, tc = work.micro_batch_size, work.prompt_tokens, work.completion_tokens
    if shared_prefix and rows >= work.group and not work.gradient_checkpointing:
        return rows // work.group * tp + rows * tc, rows * tc
    return rows * (tp + tc), rows * tc


def layer_activation_bytes(arch: Arch, bf16: bool) -> int:
    """Bytes autograd keeps per position for one decoder layer: the fp32 residual input and
    normalised value of both RMSNorms (4h); the matmul inputs (the attention norm's output, once,
    or its bf16 cast for each of q/k/v and the MLP norm's for gate/up under autocast), q, k, v
    and the attention output for SDPA, o_proj's input, and gate, up, silu(gate), their product.

    >>> layer_activation_bytes(BENCH_64M, bf16=False), layer_activation_bytes(QWEN_1_5B, bf16=True)
    (78848, 121856)
    """
    h, i = arch.hidden, arch.intermediate
    q, kv = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    inputs = 5 * h if bf16 else 2 * h
    return 4 * (4 * h) + (2 if bf16 else 4) * (inputs + 3 * q + 2 * kv + 4 * i)


def activation_bytes(arch: Arch, work: Workload, shared_prefix: bool = True) -> int:
    """Counted activations of one micro-batch; under checkpointing only each layer's fp32 input
    is kept, plus one layer recomputed in backward."""
    positions, _ = micro_batch_positions(work, shared_prefix)
    layer = layer_activation_bytes(arch, work.bf16)
    if work.gradient_checkpointing:
        return positions * (arch.layers * 4 * arch.hidden + layer)
    return positions * arch.layers * layer


def kv_cache_bytes(arch: Arch, rows: int, positions: int, bf16: bool) -> int:
    """2 x layers x kv_heads x head_dim x bytes x tokens; under autocast over fp32 weights keys
    leave RoPE in fp32 and values are bf16, 3 bytes on average.

    >>> kv_cache_bytes(QWEN_1_5B, 1, 1, bf16=True)
    43008
    """
    return int(2 * arch.layers * arch.kv_heads * arch.head_dim * (3 if bf16 else 4) * rows * positions)


def measured_bytes_per_param(ppo_vs_grpo: dict) -> dict[str, float]:
    """Model state per parameter of the 0.8M demo model: GRPO (beta 0) 16, PPO 36."""
    return {m: r["model_state_mb"] * MIB / EMBEDDED.params() for m, r in ppo_vs_grpo["results"].items()}


def calibration(memory: dict) -> dict[str, float]:
    """Measured / counted activations at 64M, per variant of bench_memory.py.

    The one-step peak falls in the last micro-batch's backward, before AdamW has state: full
    fine-tuning holds weights, reference and the first micro-batch's gradients (12Ψ); LoRA the
    base weights and the adapters' weights and gradients (4Ψ + 8 adapter params).
    """
    psi, adapters = BENCH_64M.params(), BENCH_64M.lora_params(BENCH_WORK.lora_r)
    factors = {}
    for row in memory["results"]:
        above = (row["peak_mb"] - row["baseline_mb"]) * MIB
        state = 12 * psi if row["variant"] == "full" else 4 * psi + 8 * adapters
        work = replace(BENCH_WORK, bf16=row["device"] == "cuda",  # bench_memory: bf16 on CUDA
                       gradient_checkpointing=row["variant"].endswith("gc"))
        factors[row["variant"]] = (above - state) / activation_bytes(BENCH_64M, work)
    return factors


def estimate(arch: Arch, work: Workload, lora: bool, engine: str, ranks: int, factor: float) -> dict:
    """Bytes per GPU by term, and the three phases of a step: sampling, training (the last
    micro-batch's forward and backward) and the optimizer step. ``engine``: single, ddp, fsdp2.

    >>> row = estimate(QWEN_1_5B, Workload(), lora=False, engine="ddp", ranks=8, factor=1.242)
    >>> {k: round(row[k] / GIB, 1) for k in ("state", "grads", "bf16", "activations", "logits", "kv")}
    {'state': 23.0, 'grads': 11.5, 'bf16': 2.4, 'activations': 12.1, 'logits': 2.3, 'kv': 3.9}
    >>> round(row["peak"] / GIB, 1), row["phase"]
    (51.4, 'training')
    """
    shard = ranks if engine == "fsdp2" else 1
    psi = arch.params()
    trained = arch.lora_params(work.lora_r) if lora else psi
    weights = 4 * (psi + trained) if lora else 4 * psi  # LoRA: frozen base + adapters
    reference = 4 * psi if work.beta > 0 and not lora else 0  # LoRA: the base, adapters off
    state = (weights + 8 * trained + reference) / shard  # + AdamW's two moments
    buckets = 4 * trained if engine == "ddp" else 0  # DDP's gradient buckets, kept between steps
    grads = 4 * trained / shard
    layer, root, head = arch.layer_params(), arch.root_params(), arch.vocab * arch.hidden
    gathered = 4 * (root + 2 * layer) if engine == "fsdp2" else 0  # root + this and next layer
    gathered_grads = 4 * (root + layer) if engine == "fsdp2" and not lora else 0
    cast = arch.matmul_weights() / (arch.layers if work.gradient_checkpointing else 1)
    bf16_train = 2 * (cast + head * (engine == "fsdp2")) * work.bf16  # FSDP2: the model's head
    bf16_sample = 2 * (arch.matmul_weights() + head) * work.bf16 * (not lora)  # autocast's cache
    _, completions = micro_batch_positions(work)
    logits = BYTES_PER_LOGIT * arch.vocab * (completions if engine == "fsdp2"
                                             else min(completions, HEAD_CHUNK_TOKENS))
    activations = factor * activation_bytes(arch, work, shared_prefix=engine != "fsdp2")
    rows = work.prompts_per_step * work.group // ranks
    kv = kv_cache_bytes(arch, rows, work.prompt_tokens + work.completion_tokens, work.bf16)
    sample_logits = BYTES_PER_LOGIT * arch.vocab * rows  # one position per row
    sampling = state + buckets + gathered + bf16_sample + kv + sample_logits
    training = state + buckets + grads + gathered + gathered_grads + bf16_train + activations + logits
    optimizer = state + buckets + 2 * grads  # + AdamW's foreach sqrt(v) temporaries
    phases = {"sampling": sampling, "training": training, "optimizer": optimizer}
    peak = max(phases, key=phases.get)
    return dict(state=state, grads=grads + buckets, gathered=gathered + gathered_grads, bf16=bf16_train,
                activations=activations, logits=logits, kv=kv, **phases, peak=phases[peak], phase=peak)


def table(work: Workload, factor: float, gpus: int = 8) -> str:
    """The markdown table: two models x full/LoRA x (1 GPU, DDP, FSDP2)."""
    cols = ["state", "grads", "gathered", "bf16", "activations", "logits", "training", "kv", "sampling"]
    lines = ["| model | method | GPUs | engine | weights+AdamW+ref | grads (+DDP buckets) | FSDP2 gathered "
             "| bf16 casts | activations | logits | **training** | KV cache | **sampling** | **peak** |",
             "|" + "---|" * 14]
    for name, arch in (("Qwen2.5-1.5B", QWEN_1_5B), ("Qwen2.5-7B", QWEN_7B)):
        for lora in (False, True):
            for ranks, engine in ((1, "single"), (gpus, "ddp"), (gpus, "fsdp2")):
                row = estimate(arch, work, lora, engine, ranks, factor)
                cells = " | ".join(f"{row[c] / GIB:.1f}" for c in cols)
                lines.append(f"| {name} | {'LoRA r=' + str(work.lora_r) if lora else 'full'} | {ranks} "
                             f"| {engine} | {cells} | **{row['peak'] / GIB:.1f}** ({row['phase']}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    for field, default in Workload().__dict__.items():
        if isinstance(default, bool):
            parser.add_argument("--" + field.replace("_", "-"), action=argparse.BooleanOptionalAction,
                                default=default)
        else:
            parser.add_argument("--" + field.replace("_", "-"), type=type(default), default=default)
    args = vars(parser.parse_args())
    gpus = args.pop("gpus")
    work = Workload(**args)
    per_param = measured_bytes_per_param(json.loads((RESULTS / "ppo_vs_grpo.json").read_text()))
    factors = calibration(json.loads((RESULTS / "memory.json").read_text()))
    factor = max(factors.values())
    print("Measured model state, bytes per parameter (0.8M model): "
          + ", ".join(f"{m} {b:.2f}" for m, b in per_param.items()))
    print("Measured / counted activations at 64M: "
          + ", ".join(f"{v} {f:.3f}" for v, f in factors.items()) + f"; factor used {factor:.3f}")
    print(f"Workload: {work}\nGiB per GPU:\n")
    print(table(work, factor, gpus))


if __name__ == "__main__":
    main()
