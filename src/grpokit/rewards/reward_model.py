"""A learned reward model as a reward function: load a sequence classifier, score texts.

A reward model is any local ``AutoModelForSequenceClassification`` directory with
``num_labels == 1`` (``grpokit rm`` trains one). It reads ``prompt + completion`` and its
score is the head's output at the last token. In a run config::

    rewards:
      - format
      - {name: reward_model, path: runs/rm/model, score_on: answer, scale: 0.5}

Padding: sequences are always right-padded here, whatever the tokenizer's ``padding_side``.
transformers reads the score at the rightmost token that is not ``config.pad_token_id``; with
right padding that is the same token whether a row is scored alone or next to longer rows, and
causal attention keeps padding out of every earlier position.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from grpokit.data import is_conversational
from grpokit.models import ModelLoadError, load_pretrained, load_tokenizer, pick_device
from grpokit.answers import completion_text, extract_answer
from grpokit.rewards.lookup import register_reward

ScoreOn = Literal["full", "answer"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ------------------------------------------------------------------------------- loading


def is_sequence_classifier(architectures: Sequence[str] | None) -> bool:
    """True when a config's ``architectures`` name a sequence-classification model.

    >>> is_sequence_classifier(["LlamaForSequenceClassification"]), is_sequence_classifier(["LlamaForCausalLM"])
    (True, False)
    """
    return any(name.endswith("ForSequenceClassification") for name in architectures or ())


def load_reward_model(path: str | Path, device: torch.device, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load a saved reward model (a sequence classifier with one output) in eval mode."""
    config = load_pretrained(AutoConfig, path, "reward model's config")
    if not is_sequence_classifier(config.architectures) or config.num_labels != 1:
        found = ", ".join(config.architectures or ["no architectures"])
        raise ModelLoadError(
            f"reward model path {str(path)!r} holds {found} with num_labels={config.num_labels}; "
            f"expected an AutoModelForSequenceClassification with num_labels=1 (train one from a "
            f"causal LM with `grpokit rm`)"
        )
    model = load_pretrained(AutoModelForSequenceClassification, path, "reward model", dtype=dtype)
    return model.to(device).eval()


def ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """Give the tokenizer a pad token (EOS if it has none) and the model its id; return the id
    the model treats as padding (transformers cannot score a batch of more than one row without it)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.config.pad_token_id


# ------------------------------------------------------------------------------ encoding


def render_conversation(messages: list[dict], tokenizer: PreTrainedTokenizerBase) -> str:
    """A whole chat (prompt and response messages) as text, through the chat template."""
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"tokenizer '{name}' has no chat_template, so chat-message rows cannot be "
                         f"scored; set tokenizer.chat_template or use string prompts")
    return tokenizer.apply_chat_template(list(messages), tokenize=False)


def scored_text(prompt: Any, completion: Any, tokenizer: PreTrainedTokenizerBase) -> str:
    """The text a reward model reads for one (prompt, completion).

    String prompts are concatenated with the completion's text. A chat prompt (or ``None``
    with a completion that is a whole chat, TRL's implicit-prompt format) is rendered as one
    conversation with the tokenizer's chat template; a string completion of a chat prompt is
    the assistant's message.

    >>> scored_text("2+2=", "4", tokenizer=None)
    '2+2=4'
    >>> scored_text(None, "2+2=4", tokenizer=None)
    '2+2=4'
    """
    if prompt is None:
        return completion if isinstance(completion, str) else render_conversation(completion, tokenizer)
    if not is_conversational(prompt):
        return prompt + completion_text(completion)
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    return render_conversation(list(prompt) + list(completion), tokenizer)


def encode(text: str, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None) -> list[int]:
    """Token ids of ``text``; beyond ``max_length`` the *first* tokens are dropped, because the
    score is read at the last token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_length:] if max_length else ids


def right_pad(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of token-id lists padded at the right.

    >>> batch = right_pad([[5, 6, 7], [8]], pad_id=0)
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    """
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def sequence_scores(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) float32 scores of a right-padded batch (the head's one output at each row's last token)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()


# ------------------------------------------------------------------------------- scoring


class RewardModelScorer:
    """A reward model as a TRL reward function: ``scorer(prompts, completions, **kwargs)``.

    Args:
        path: a local reward-model directory (``AutoModelForSequenceClassification``,
            ``num_labels == 1``) with its tokenizer.
        device: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1'.
        batch_size: texts per forward pass (memory bound only; scores do not depend on it).
        score_on: 'full' scores prompt + whole completion; 'answer' scores prompt + the text
            inside the completion's last ``<answer>…</answer>`` (R1's helpful reward model reads
            only the final summary, per the DeepSeek-R1 Nature paper); a completion without one gets None.
        scale, shift: the reward is ``scale * score + shift`` (to standardise with the held-out
            score mean m and std s from the training summary: scale = 1/s, shift = -m/s).
        max_length: keep only the last this many tokens of each text (None: keep all).
        dtype: weights dtype, 'float32' or 'bfloat16' / 'float16' on a GPU.
    """

    def __init__(self, path: str | Path, device: str = "auto", batch_size: int = 32,
                 score_on: ScoreOn = "full", scale: float = 1.0, shift: float = 0.0,
                 max_length: int | None = None, dtype: str = "float32"):
        if score_on not in ("full", "answer"):
            raise ValueError(f"reward_model: score_on is {score_on!r}; expected 'full' or 'answer'")
        if batch_size < 1:
            raise ValueError(f"reward_model: batch_size is {batch_size}; expected at least 1")
        if dtype not in DTYPES:
            raise ValueError(f"reward_model: dtype is {dtype!r}; expected one of {', '.join(DTYPES)}")
        self.__name__ = "reward_model"  # the reward's name in metrics, like a function's
        self.device = pick_device(device)
        self.model = load_reward_model(path, self.device, DTYPES[dtype])
        self.tokenizer = load_tokenizer(path)
        self.pad_id = ensure_pad_token(self.model, self.tokenizer)
        self.batch_size, self.score_on, self.max_length = batch_size, score_on, max_length
        self.scale, self.shift = scale, shift

    @torch.inference_mode()
    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """Raw reward-model scores of ``texts``, batched by length to limit padding."""
        encoded = [encode(text, self.tokenizer, self.max_length) for text in texts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        scores = [0.0] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = right_pad([encoded[i] for i in rows], self.pad_id)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            for i, score in zip(rows, sequence_scores(self.model, batch).tolist()):
                scores[i] = score
        return scores

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float | None]:
        """One reward per completion: ``scale * score + shift``, None where there is no answer span."""
        completions = [self.scored_part(c) for c in completions]
        kept = [i for i, c in enumerate(completions) if c is not None]
        texts = [scored_text(prompts[i], completions[i], self.tokenizer) for i in kept]
        rewards: list[float | None] = [None] * len(completions)
        for i, score in zip(kept, self.score_texts(texts)):
            rewards[i] = self.scale * score + self.shift
        return rewards

    def scored_part(self, completion: Any) -> Any:
        """The completion itself ('full') or its answer span ('answer'; None if it has none)."""
        if self.score_on == "full":
            return completion
        answer = extract_answer(completion)
        if answer is None or isinstance(completion, str):
            return answer
        return [{"role": "assistant", "content": answer}]


@functools.cache
def cached_scorer(path: str, device: str, batch_size: int, score_on: str, scale: float,
                  shift: float, max_length: int | None, dtype: str) -> RewardModelScorer:
    """One loaded scorer per distinct setting, so a reward called every step loads once."""
    return RewardModelScorer(path, device, batch_size, score_on, scale, shift, max_length, dtype)


@register_reward("reward_model")
def reward_model_reward(prompts, completions, *, path: str | None = None, batch_size: int = 32,
                        score_on: ScoreOn = "full", device: str = "auto", scale: float = 1.0,
                        shift: float = 0.0, max_length: int | None = None, dtype: str = "float32",
                        **kwargs) -> list[float | None]:
    """Score completions with the reward model at ``path`` (see :class:`RewardModelScorer`)."""
    if path is None:
        raise ValueError("reward 'reward_model' needs the reward model's directory: write "
                         "rewards: [{name: reward_model, path: runs/rm/model}]")
    scorer = cached_scorer(str(Path(path).resolve()), device, batch_size, score_on, float(scale),
                           float(shift), max_length, dtype)
    return scorer(prompts, completions)
