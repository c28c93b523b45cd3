"""The code blocks of docs/ARCHITECTURE.md's "How to add" section run, and what they register works."""

import re
from pathlib import Path
from types import SimpleNamespace

import torch

from grpokit.algorithms import ADVANTAGE_ESTIMATORS, POLICY_LOSSES, AdvantageInputs, LossSettings, PolicyLossInputs
from grpokit.rewards import resolve_reward
from grpokit.rewards.lookup import REWARD_REGISTRY

DOC = (Path(__file__).parents[1] / "docs" / "ARCHITECTURE.md").read_text()
SECTION = DOC[DOC.index("## How to add"):]


def test_the_how_to_add_examples_run_and_register_working_plugins():
    blocks = re.findall(r"```python\n(.*?)```", SECTION, flags=re.S)
    assert len(blocks) == 3
    try:
        for block in blocks:
            exec(compile(block, "docs/ARCHITECTURE.md", "exec"), {})
        logp = torch.zeros(1, 2, requires_grad=True)
        per_token, _ = POLICY_LOSSES.get("reinforce_doc")(
            PolicyLossInputs(logp, logp.detach(), torch.tensor([[1.0, -2.0]]), torch.ones(1, 2)), LossSettings(0.2, 0.2))
        per_token.sum().backward()
        assert logp.grad.tolist() == [[-1.0, 2.0]]
        inputs = AdvantageInputs(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.ones(2, 1))
        assert ADVANTAGE_ESTIMATORS.get("mean_baseline_doc")(inputs, SimpleNamespace()).tolist() == [[0.5], [-0.5]]
        assert resolve_reward("ends_with_period_doc")(["q", "q"], ["Yes.", "no"]) == [1.0, 0.0]
    finally:
        POLICY_LOSSES._functions.pop("reinforce_doc", None)
        ADVANTAGE_ESTIMATORS._functions.pop("mean_baseline_doc", None)
        REWARD_REGISTRY.pop("ends_with_period_doc", None)
