"""The refactored losses, aggregations and estimators against values recorded from the code
before they became plug-ins (tests/data/recorded_algorithms.json, written by that code from the
inputs stored beside the values)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from grpokit.algorithms import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    AdvantageInputs,
    LossSettings,
    PolicyLossInputs,
    group_advantages,
    process_advantages,
    token_weights,
)

RECORDED = json.loads((Path(__file__).parent / "data" / "recorded_algorithms.json").read_text())
INPUTS = {k: torch.tensor(v) if isinstance(v, list) else v for k, v in RECORDED["inputs"].items()}
MASK = INPUTS["mask"]


def case_id(case):
    return "-".join(str(case[k]) for k in ("loss_type", "level", "beta", "bias_correction", "epsilon_high",
                                           "advantages"))


@pytest.mark.parametrize("case", RECORDED["policy_loss"], ids=case_id)
def test_policy_losses_match_the_recorded_values(case):
    logp = INPUTS["logp"].clone().requires_grad_(True)
    advantages = (INPUTS["adv_seq"][:, None].expand_as(MASK) if case["advantages"] == "seq" else INPUTS["adv_tok"])
    ref = INPUTS["ref_logp"] if case["beta"] > 0 else None
    loss_fn = POLICY_LOSSES.get("gspo" if case["level"] == "sequence" else "clip")
    settings = LossSettings(0.2, case["epsilon_high"] or 0.2, case["beta"], case["bias_correction"])
    per_token, metrics = loss_fn(PolicyLossInputs(logp, INPUTS["old_logp"], advantages, MASK, ref), settings)
    loss = (per_token * token_weights(MASK, case["loss_type"], max_completion_length=INPUTS["max_completion_length"])).sum()
    loss.backward()
    assert loss.item() == pytest.approx(case["loss"], rel=1e-6, abs=1e-7)
    torch.testing.assert_close(logp.grad, torch.tensor(case["grad"]), rtol=1e-5, atol=1e-7)
    # float32 sums over many tokens: the order a CPU's vector units add them in moves the last digits
    # (kl_sum differs by 1.2e-6 relative between two x86 machines), hence the grad's rtol here too
    assert {k: float(v) for k, v in metrics.items()} == pytest.approx(case["metrics"], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_match_the_recorded_values(scale):
    got = group_advantages(INPUTS["rewards"], INPUTS["group_size"], scale)
    assert got.tolist() == RECORDED["group_advantages"][scale]  # exactly
    inputs = AdvantageInputs(INPUTS["rewards"], torch.arange(6) // 3, MASK)
    per_token = ADVANTAGE_ESTIMATORS.get("grpo")(inputs, SimpleNamespace(scale_rewards=scale))
    assert per_token[:, 0].tolist() == RECORDED["group_advantages"][scale]
    assert (per_token == per_token[:, :1]).all()  # the same on every token of a completion


def test_process_advantages_match_the_recorded_values():
    got = process_advantages([[1.0, 0.0], [1.0], [0.0, 0.0, 1.0], [1.0], [0.0], [1.0, 1.0]],
                             [[1, 3], [2], [0, 1, 4], [3], [0], [0, 1]], group_size=3, width=5)
    assert got.tolist() == RECORDED["process_advantages"]


def test_ppo_loss_and_gae_match_the_recorded_values():
    logp = INPUTS["logp"].clone().requires_grad_(True)
    per_token, stats = POLICY_LOSSES.get("clip")(
        PolicyLossInputs(logp, INPUTS["old_logp"], INPUTS["adv_tok"], MASK), LossSettings(0.2, 0.2))
    loss = (per_token * token_weights(MASK, "bnpo")).sum()
    loss.backward()
    recorded = RECORDED["ppo"]
    assert loss.item() == pytest.approx(recorded["policy_loss"]["loss"], rel=1e-6)
    assert (stats["clip_region_sum"] / stats["tokens"]).item() == pytest.approx(recorded["policy_loss"]["clipped"])
    torch.testing.assert_close(logp.grad, torch.tensor(recorded["policy_loss"]["grad"]), rtol=1e-5, atol=1e-7)
    inputs = AdvantageInputs(INPUTS["rewards"], torch.arange(6), MASK, values=torch.tensor(recorded["values"]),
                             sampling_logp=INPUTS["old_logp"], ref_logp=INPUTS["ref_logp"])
    advantages = ADVANTAGE_ESTIMATORS.get("gae")(inputs, SimpleNamespace(kl_coef=0.05, gamma=1.0, lam=0.95))
    assert advantages.tolist() == recorded["gae"]["advantages"]
