"""Shared fixtures: tiny models (CPU, no downloads) and the real SmolLM2 converted once per session."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from grpokit.cli import app
from grpokit.models import builtin

from grpokit.models import build_char_tokenizer, create_tiny_model

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)


def make_varied_model(tokenizer, seed: int = 0, eos_scale: float = 1.7):
    """A tiny Llama whose greedy outputs vary by prompt and sometimes end in EOS.

    The default init (std 0.02) makes every prompt produce one repeated token; re-drawing the
    matrices at std 2/sqrt(fan_in) gives varied text, and scaling the (tied) EOS row of the
    output embedding makes EOS the argmax at some steps but not others.
    """
    model = create_tiny_model(tokenizer, **TINY)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 2.0 / param.shape[1] ** 0.5)
        model.get_output_embeddings().weight[tokenizer.eos_token_id] *= eos_scale
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run much faster on one thread, above all when other jobs share the cores
    (one test took 135 s on two busy threads); every test module runs on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def char_tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(char_tokenizer):
    return create_tiny_model(char_tokenizer, **TINY).eval()


@pytest.fixture(scope="session")
def varied_model(char_tokenizer):
    return make_varied_model(char_tokenizer)


SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The package's GGUF file converted by `grpokit models import-gguf`, once per test session."""
    spec = builtin.BUILTIN_MODELS[SMOLLM2]
    gguf = Path(importlib.util.find_spec(spec.package).submodule_search_locations[0]) / spec.file
    out = tmp_path_factory.mktemp("models") / SMOLLM2
    result = CliRunner().invoke(app, ["models", "import-gguf", str(gguf), str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.parent.iterdir()) == [SMOLLM2]  # no staging directory left
    return out


class StepRecorder:
    """A trainer callback keeping every step's batch and metrics."""

    def __init__(self):
        self.batches, self.metrics = [], []

    def on_step_end(self, trainer, step, batch, metrics):
        self.batches.append(batch)
        self.metrics.append(dict(metrics))


@pytest.fixture
def record_steps():
    """``record_steps()``: a new :class:`StepRecorder` to pass in ``callbacks``."""
    return StepRecorder


def forward_and_sampled_logprobs(model, episode):
    """At an episode's sampled tokens: the log-probs of a plain forward over its whole context,
    and the ones the sampler recorded."""
    with torch.no_grad():
        logits = model(torch.tensor([episode.context_ids])).logits[0].float()
    start = len(episode.prompt_ids)
    logp = torch.log_softmax(logits[start - 1 : -1], -1).gather(1, torch.tensor(episode.ids)[:, None])[:, 0]
    sampled = torch.tensor(episode.sampled_mask, dtype=torch.bool)
    return logp[sampled], torch.tensor(episode.sampling_logp)[sampled]


@pytest.fixture
def episode_logprobs():
    """``episode_logprobs(model, episode)``: see :func:`forward_and_sampled_logprobs`."""
    return forward_and_sampled_logprobs


@pytest.fixture
def served_processes():
    """A function: pids of live ``transformers serve`` processes whose command line names a
    model directory (a served judge left behind would show up here)."""
    def find(model_dir) -> list[int]:
        """Pids of live processes whose command line names ``model_dir`` (the served judge)."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        cmdline = f.read().decode(errors="replace")
                    with open(f"/proc/{entry}/stat") as f:
                        zombie = f.read().split(") ")[-1].startswith("Z")
                except OSError:
                    continue
                if str(model_dir) in cmdline and "transformers" in cmdline and "serve" in cmdline and not zombie:
                    pids.append(int(entry))
        return pids

    return find
