"""Samples of a step's completions: JSON records and a markdown table for the text sinks."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path


def pick_rows(num_rows: int, count: int, step: int) -> list[int]:
    """``count`` distinct row indices in increasing order, the same for the same step.

    >>> pick_rows(3, 5, step=7)
    [0, 1, 2]
    >>> len(pick_rows(64, 4, step=7)), pick_rows(64, 4, step=7) == pick_rows(64, 4, step=7)
    (4, True)
    """
    return sorted(random.Random(step).sample(range(num_rows), min(count, num_rows)))


def completion_records(batch, tokenizer, rows: list[int], step: int) -> list[dict]:
    """One record per chosen completion of a ``StepBatch``: prompt, completion, each reward
    (None where the function returned None), the total and the advantage (with per-token
    advantages, their mean over the completion's tokens); a multi-turn episode also has its
    ``messages`` (the model's turns and the environment's replies) and its ``turns``."""
    rollout, records = batch.rollout, []
    for i in rows:
        group = i // rollout.group_size
        prompt = rollout.prompt_ids[group][rollout.prompt_mask[group].bool()]
        completion = rollout.completion_ids[i][rollout.completion_mask[i].bool()]
        advantage = batch.advantages[i]
        if advantage.dim() == 1:  # (Tc,) process-supervision advantages
            advantage = advantage[rollout.completion_mask[i].bool()].mean()
        record = {"step": step, "prompt": tokenizer.decode(prompt, skip_special_tokens=True),
                  "completion": tokenizer.decode(completion, skip_special_tokens=True)}
        if rollout.conversations is not None:
            record["messages"] = rollout.conversations[i]
            record["turns"] = sum(m["role"] == "assistant" for m in rollout.conversations[i])
        if batch.rewards is not None:
            scores = batch.rewards.per_func[i].tolist()
            record["rewards"] = {name: (None if math.isnan(s) else s)
                                 for name, s in zip(batch.rewards.names, scores)}
            record["reward"] = float(batch.rewards.total[i])
        record["advantage"] = float(advantage)
        records.append(record)
    return records


def completions_markdown(records: list[dict]) -> str:
    """A markdown table of the records (TensorBoard and MLflow render it).

    >>> print(completions_markdown([{"step": 3, "prompt": "2+2?", "completion": "a|b\\nc",
    ...                              "rewards": {"format": 1.0, "correctness": None},
    ...                              "reward": 1.0, "advantage": 0.5}]))
    | prompt | completion | format | correctness | reward | advantage |
    |---|---|---|---|---|---|
    | 2+2? | a\\|b<br>c | 1 | None | 1 | 0.5 |
    """
    names = list(records[0].get("rewards", {})) if records else []
    header = ["prompt", "completion", *names, "reward", "advantage"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        values = [r["prompt"], r["completion"], *(r["rewards"][n] for n in names),
                  r.get("reward"), r["advantage"]]
        lines.append("| " + " | ".join(markdown_cell(v) for v in values) + " |")
    return "\n".join(lines)


def markdown_cell(value) -> str:
    """A table cell: floats to 4 significant digits, pipes escaped, newlines as ``<br>``.

    >>> markdown_cell(0.123456), markdown_cell("a|b\\nc"), markdown_cell(None)
    ('0.1235', 'a\\\\|b<br>c', 'None')
    """
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", "<br>")


class RunFile:
    """A JSON-lines file in a run's output directory that grows as the run goes.

    Attached at the first step a callback sees: a run starting at step 1 replaces an old file
    of the same name; a resumed run appends to it, after the trainer has cut it back to the
    checkpoint's step (``TrainingLoop.run_files``).
    """

    def __init__(self, name: str):
        self.name, self.path = name, None

    def attach(self, output_dir: str | Path, step: int) -> None:
        if self.path is None:
            self.path = Path(output_dir) / self.name
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if step == 1:
                self.path.write_text("")

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

