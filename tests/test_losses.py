"""Hand-computed checks for the clip and gspo policy losses, the aggregations and the KL term."""

import math
from dataclasses import dataclass

import pytest
import torch

from grpokit.algorithms import (
    AGGREGATIONS,
    POLICY_LOSSES,
    BatchTotals,
    LossSettings,
    PolicyLossInputs,
    clipped_surrogate,
    k3_kl,
    register_aggregation,
    token_weights,
)
from grpokit.algorithms.policy_losses import sequence_log_ratio
from grpokit.parallel.ranks import add_stats

D = torch.float64


@dataclass
class Batch:
    """A micro-batch as the trainer hands it over: one advantage per completion and the weights."""

    logp: torch.Tensor
    old_logp: torch.Tensor
    advantages: torch.Tensor  # (B,)
    mask: torch.Tensor
    weights: torch.Tensor
    ref_logp: torch.Tensor | None = None


def policy_loss(x: Batch, *, epsilon_low, epsilon_high, beta=0.0, importance_sampling_level="token",
                use_bias_correction_kl=False):
    """The trainer's loss of a micro-batch: the policy loss of the level, weighted and summed."""
    loss_fn = POLICY_LOSSES.get("gspo" if importance_sampling_level == "sequence" else "clip")
    inputs = PolicyLossInputs(x.logp, x.old_logp, x.advantages[:, None].expand_as(x.mask), x.mask, x.ref_logp)
    per_token, metrics = loss_fn(inputs, LossSettings(epsilon_low, epsilon_high, beta, use_bias_correction_kl))
    return (per_token * x.weights).sum(), metrics


def weights_of(mask, loss_type, max_completion_length=None, global_num_tokens=None):
    mask = mask.to(D) if not mask.is_floating_point() else mask
    totals = BatchTotals(global_num_tokens or float(mask.sum()), mask.shape[0], 1, max_completion_length)
    return token_weights(mask, loss_type, totals)

# ---------------------------------------------------------------- fixed B=2, T=3 case
# log-ratios logp - old_logp: row 0 [0.1, 0.2, 0.3]; row 1 [-0.1, 0.1, <pad 7.0>]
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-0.7, -1.2, -3.0]], dtype=D)
DELTA = torch.tensor([[0.1, 0.2, 0.3], [-0.1, 0.1, 7.0]], dtype=D)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=D)
ADV = torch.tensor([1.0, -1.0], dtype=D)
EPS = 0.3  # clip range [0.7, 1.3]

# Token level, ratios e^0.1=1.1051709, e^0.2=1.2214028, e^0.3=1.3498588 -> clipped to 1.3 (A>0)
#   row 0 (A=+1) losses -1.1051709, -1.2214028, -1.3            sum -3.6265737 over 3 tokens
#   row 1 (A=-1) ratios e^-0.1=0.9048374, e^0.1=1.1051709 (in range)  sum +2.0100083 over 2 tokens
# Sequence level (GSPO): s0 = exp(mean(0.1,0.2,0.3)) = e^0.2 = 1.2214028 (< 1.3, unclipped)
#   row 0 sum -3 * 1.2214028 = -3.6642083 ; s1 = exp(mean(-0.1, 0.1)) = 1 -> row 1 sum +2.0
# grpo:    row0/(3*2) + row1/(2*2);  bnpo/dapo(local): (row0+row1)/5
# dapo with global_num_tokens=20: (row0+row1)/20;  dr_grpo L=4: (row0+row1)/(4*2)
CASES = [
    # loss_type, level, kwargs, expected
    ("grpo", "token", {}, -0.1019269),  # -3.6265737/6 + 2.0100083/4 = -0.6044290 + 0.5025021
    ("bnpo", "token", {}, -0.3233131),  # -1.6165654 / 5
    ("dapo", "token", {}, -0.3233131),  # local count 5, same as bnpo
    ("dapo", "token", {"global_num_tokens": 20}, -0.0808283),  # -1.6165654 / 20
    ("dr_grpo", "token", {"max_completion_length": 4}, -0.2020707),  # -1.6165654 / 8
    ("grpo", "sequence", {}, -0.1107014),  # -3.6642083/6 + 2.0/4 = -0.6107014 + 0.5
    ("bnpo", "sequence", {}, -0.3328417),  # -1.6642083 / 5
    ("dapo", "sequence", {}, -0.3328417),
    ("dapo", "sequence", {"global_num_tokens": 20}, -0.0832104),  # -1.6642083 / 20
    ("dr_grpo", "sequence", {"max_completion_length": 4}, -0.2080260),  # -1.6642083 / 8
]


@pytest.mark.parametrize("loss_type, level, kwargs, expected", CASES)
def test_policy_loss_by_hand(loss_type, level, kwargs, expected):
    w = weights_of(MASK, loss_type, **kwargs)
    x = Batch(OLD + DELTA, OLD, ADV, MASK, w)
    loss, metrics = policy_loss(x, epsilon_low=EPS, epsilon_high=EPS, beta=0.0, importance_sampling_level=level)
    assert loss.item() == pytest.approx(expected, abs=2e-7)
    assert metrics["tokens"].item() == 5.0
    # token level: only row 0 token 3 (ratio 1.35 > 1.3, A>0) is clipped; GSPO: nothing
    assert metrics["clip_high_sum"].item() == (1.0 if level == "token" else 0.0)


def test_token_weights_by_hand():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])  # lengths 3, 2, 0 ; B = 3
    ninth, sixth = 1 / 9, 1 / 6
    expected = {
        ("grpo", None, None): [[ninth] * 3, [sixth, sixth, 0], [0, 0, 0]],  # 1/(3*3), 1/(2*3), empty row 0
        ("bnpo", None, None): [[0.2] * 3, [0.2, 0.2, 0], [0, 0, 0]],  # 1/5
        ("dapo", None, 10): [[0.1] * 3, [0.1, 0.1, 0], [0, 0, 0]],  # 1/10 (global count)
        ("dr_grpo", 4, None): [[1 / 12] * 3, [1 / 12, 1 / 12, 0], [0, 0, 0]],  # 1/(4*3)
    }
    for (name, max_len, global_n), want in expected.items():
        got = weights_of(mask, name, max_completion_length=max_len, global_num_tokens=global_n)
        torch.testing.assert_close(got, torch.tensor(want, dtype=D), atol=1e-7, rtol=0)


def test_token_weights_errors_and_registry():
    with pytest.raises(ValueError, match=r"Valid: 'bnpo', 'dapo', 'dr_grpo', 'grpo'"):
        token_weights(MASK, "ppo")
    with pytest.raises(ValueError, match="max_completion_length"):
        token_weights(MASK, "dr_grpo")
    with pytest.raises(ValueError, match="already registered"):
        register_aggregation("grpo")(lambda mask, totals: mask)
    try:
        register_aggregation("sum_test")(lambda mask, totals: mask)
        assert torch.equal(token_weights(MASK, "sum_test"), MASK)
    finally:
        AGGREGATIONS._functions.pop("sum_test", None)


def test_sequence_log_ratio_ignores_padding():
    seq = sequence_log_ratio(OLD + DELTA, OLD, MASK).exp()
    # every token of a row carries the row's value, padded token 7.0 is ignored
    torch.testing.assert_close(seq, torch.tensor([[1.2214028], [1.0]], dtype=D), atol=1e-7, rtol=0)
    empty = sequence_log_ratio(torch.ones(1, 2), torch.zeros(1, 2), torch.zeros(1, 2)).exp()
    assert empty.tolist() == [[1.0]]  # no valid tokens -> exp(0)


# ---------------------------------------------------------------- clipping and gradients
# eps_low = 0.2, eps_high = 0.28 (DAPO clip-higher): clip range [0.8, 1.28]
CLIP_RATIOS = torch.tensor([[1.5, 1.25, 0.5], [0.5, 0.75, 1.5]], dtype=D)
CLIP_ADV = torch.tensor([1.0, -1.0], dtype=D)


def _clip_loss_and_grad(epsilon_high):
    logp = torch.log(CLIP_RATIOS).requires_grad_(True)  # old_logp = 0 -> ratio = CLIP_RATIOS
    ones = torch.ones(2, 3, dtype=D)
    x = Batch(logp, torch.zeros(2, 3, dtype=D), CLIP_ADV, ones, ones)
    loss, metrics = policy_loss(x, epsilon_low=0.2, epsilon_high=epsilon_high, beta=0.0, importance_sampling_level="token")
    loss.backward()
    return loss.item(), logp.grad, metrics


def test_clipping_both_sides_zeroes_gradient():
    loss, grad, metrics = _clip_loss_and_grad(epsilon_high=0.28)
    # row 0 (A=+1): 1.5 clipped to 1.28 -> -1.28 (grad 0); 1.25 inside -> -1.25 (grad -r = -1.25);
    #               0.5 below the low side but A>0 keeps min = r*A -> -0.5 (grad -0.5)
    # row 1 (A=-1): 0.5 clipped to 0.8 -> 0.8 (grad 0); 0.75 clipped to 0.8 -> 0.8 (grad 0);
    #               1.5 above the high side but A<0 keeps r*A -> +1.5 (grad +1.5)
    # sum: -1.28 - 1.25 - 0.5 + 0.8 + 0.8 + 1.5 = 0.07   (d(-A*r)/dlogp = -A*r)
    assert loss == pytest.approx(0.07, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor([[0.0, -1.25, -0.5], [0.0, 0.0, 1.5]], dtype=D))
    assert metrics["clip_high_sum"].item() == 1.0  # row 0 token 0
    assert metrics["clip_low_sum"].item() == 2.0  # row 1 tokens 0, 1
    assert metrics["clip_region_sum"].item() == 3.0
    assert metrics["tokens"].item() == 6.0


def test_clip_higher_differs_from_symmetric_clip():
    loss, grad, metrics = _clip_loss_and_grad(epsilon_high=0.2)
    # with [0.8, 1.2], row 0 token 1 (ratio 1.25, A>0) is now clipped to 1.2: loss -1.2, grad 0
    # sum: -1.2 - 1.2 - 0.5 + 0.8 + 0.8 + 1.5 = 0.2
    assert loss == pytest.approx(0.2, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, -0.5], [0.0, 0.0, 1.5]], dtype=D))
    assert metrics["clip_high_sum"].item() == 2.0
    assert metrics["clip_region_sum"].item() == 4.0


def test_clipped_surrogate_values():
    got = clipped_surrogate(CLIP_RATIOS, CLIP_ADV[:, None], 0.2, 0.28)
    want = torch.tensor([[-1.28, -1.25, -0.5], [0.8, 0.8, 1.5]], dtype=D)
    torch.testing.assert_close(got, want)


def test_clip_metrics_ignore_padding():
    # row 0 (A=+1): [1.5 high-clip, 0.5 (not clipped for A>0), 1.0]; row 1 (A=-1): [0.5 low-clip, 1.5, pad 0.5]
    ratios = torch.tensor([[1.5, 0.5, 1.0], [0.5, 1.5, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    x = Batch(torch.log(ratios), torch.zeros(2, 3), torch.tensor([1.0, -1.0]), mask, mask)
    _, m = policy_loss(x, epsilon_low=0.2, epsilon_high=0.28, beta=0.0, importance_sampling_level="token")
    assert (m["tokens"].item(), m["clip_low_sum"].item(), m["clip_high_sum"].item(), m["clip_region_sum"].item()) == (
        5.0, 1.0, 1.0, 2.0,
    )
    assert not any(v.requires_grad for v in m.values())


# ---------------------------------------------------------------- KL
def test_k3_kl_by_hand():
    logp = torch.log(torch.tensor([0.5, 0.25, 0.3], dtype=D))
    ref = torch.log(torch.tensor([0.25, 0.5, 0.3], dtype=D))
    # rho = 0.5: 0.5 - 1 - ln 0.5 = 0.1931472 ; rho = 2: 2 - 1 - ln 2 = 0.3068528 ; rho = 1: 0
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor([0.1931472, 0.3068528, 0.0], dtype=D), atol=1e-7, rtol=0)
    g = torch.Generator().manual_seed(0)
    assert (k3_kl(torch.randn(50, generator=g), torch.randn(50, generator=g)) >= 0).all()


def test_kl_included_with_beta():
    lp = torch.log(torch.tensor([[0.5, 0.3]], dtype=D)).requires_grad_(True)
    ref = torch.log(torch.tensor([[0.25, 0.3]], dtype=D))
    mask = torch.ones(1, 2, dtype=D)
    w = weights_of(mask, "grpo")  # [[0.5, 0.5]]
    x = Batch(lp, lp.detach(), torch.zeros(1, dtype=D), mask, w, ref_logp=ref)
    loss, m = policy_loss(x, epsilon_low=0.2, epsilon_high=0.2, beta=0.04, importance_sampling_level="token")
    # A = 0 -> surrogate 0; loss = 0.04 * (0.1931472 * 0.5 + 0 * 0.5) = 0.0038629
    assert loss.item() == pytest.approx(0.0038629, abs=1e-7)
    assert m["kl_sum"].item() == pytest.approx(0.1931472, abs=1e-7)
    loss.backward()
    # d k3 / d logp = 1 - rho = 0.5 -> grad = 0.04 * 0.5 * 0.5 = 0.01 (DSM Eq. 21: coefficient A + beta*(rho - 1))
    torch.testing.assert_close(lp.grad, torch.tensor([[0.01, 0.0]], dtype=D))
    loss0, m0 = policy_loss(x, epsilon_low=0.2, epsilon_high=0.2, beta=0.0, importance_sampling_level="token")
    assert loss0.item() == 0.0 and m0["kl_sum"].item() == pytest.approx(0.1931472, abs=1e-7)
    x.ref_logp = None
    loss_none, m_none = policy_loss(x, epsilon_low=0.2, epsilon_high=0.2, beta=0.04, importance_sampling_level="token")
    assert loss_none.item() == 0.0 and m_none["kl_sum"].item() == 0.0


def _kl_pass(old_p, **kw):
    """The loss, kl_sum and logp gradient for one row of two tokens, p = [0.5, 0.3], reference
    [0.25, 0.3], old policy ``old_p``, A = 0 (so only the KL term acts), beta = 0.04."""
    lp = torch.log(torch.tensor([[0.5, 0.3]], dtype=D)).requires_grad_(True)
    ref = torch.log(torch.tensor([[0.25, 0.3]], dtype=D))
    old = torch.log(torch.tensor([old_p], dtype=D))
    mask = torch.ones(1, 2, dtype=D)
    x = Batch(lp, old, torch.zeros(1, dtype=D), mask, weights_of(mask, "grpo"), ref_logp=ref)
    loss, m = policy_loss(x, epsilon_low=0.2, epsilon_high=0.2, beta=0.04, **kw)
    loss.backward()
    return loss.item(), m["kl_sum"].item(), lp.grad


def test_bias_corrected_kl_on_policy_keeps_the_value_and_takes_the_reverse_kl_gradient():
    # ratio 1: the value is k3 = 0.1931472 as before; d(k3 * r)/d logp = (1 - rho) + k3 = -ln rho
    # = logp - ref_logp = ln 2 = 0.6931472 (TRL's use_bias_correction_kl; uncorrected: 1 - rho = 0.5)
    loss, kl_sum, grad = _kl_pass([0.5, 0.3], use_bias_correction_kl=True)
    assert loss == pytest.approx(0.04 * 0.5 * 0.1931472, abs=1e-9) and kl_sum == pytest.approx(0.1931472, abs=1e-7)
    torch.testing.assert_close(grad, torch.tensor([[0.04 * 0.5 * math.log(2), 0.0]], dtype=D))
    _, _, plain = _kl_pass([0.5, 0.3], use_bias_correction_kl=False)
    torch.testing.assert_close(plain, torch.tensor([[0.04 * 0.5 * 0.5, 0.0]], dtype=D))


def test_bias_corrected_kl_off_policy_is_weighted_by_the_ratio():
    # old p = 0.4 on token 0: r = 0.5 / 0.4 = 1.25; the KL term is k3 * r = 0.2414340, the metric
    # too (as TRL logs it); the gradient is r * (1 - rho + k3) = 1.25 * ln 2 = 0.8664340
    loss, kl_sum, grad = _kl_pass([0.4, 0.3], use_bias_correction_kl=True)
    assert kl_sum == pytest.approx(1.25 * 0.1931472, abs=1e-7)
    assert loss == pytest.approx(0.04 * 0.5 * 1.25 * 0.1931472, abs=1e-9)
    torch.testing.assert_close(grad, torch.tensor([[0.04 * 0.5 * 1.25 * math.log(2), 0.0]], dtype=D))


# ---------------------------------------------------------------- micro-batch invariance
def _random_batch(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 5
    lengths = torch.tensor([5, 3, 1, 0])  # includes an empty row
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(D)  # (B, T)
    old = -torch.rand(B, T, generator=g, dtype=D) * 3
    logp = old + 0.3 * torch.randn(B, T, generator=g, dtype=D)
    ref = old + 0.3 * torch.randn(B, T, generator=g, dtype=D)
    adv = torch.randn(B, generator=g, dtype=D)
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_micro_batch_invariance(loss_type, level):
    logp, old, ref, adv, mask = _random_batch(seed=1)
    w = weights_of(mask, loss_type, max_completion_length=6)  # full-batch weights
    kw = dict(epsilon_low=0.2, epsilon_high=0.28, beta=0.1, importance_sampling_level=level)

    full_lp = logp.clone().requires_grad_(True)
    full, full_m = policy_loss(Batch(full_lp, old, adv, mask, w, ref), **kw)
    full.backward()

    for chunks in ([slice(0, 2), slice(2, 4)], [slice(i, i + 1) for i in range(4)]):
        lp = logp.clone().requires_grad_(True)
        total, sums = 0.0, {}
        for rows in chunks:
            part, m = policy_loss(Batch(lp[rows], old[rows], adv[rows], mask[rows], w[rows], ref[rows]), **kw)
            total = total + part
            sums = add_stats(sums, m)  # sums, and min/max for the per-sequence extremes
        total.backward()
        torch.testing.assert_close(total, full)
        torch.testing.assert_close(lp.grad, full_lp.grad)
        for k, v in full_m.items():
            assert sums[k] == pytest.approx(v.item(), rel=1e-6, abs=1e-7), k


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_on_policy_gradient_is_weighted_policy_gradient(loss_type):
    logp, _, _, adv, mask = _random_batch(seed=2)
    w = weights_of(mask, loss_type, max_completion_length=6)
    lp = logp.clone().requires_grad_(True)
    loss, m = policy_loss(Batch(lp, lp, adv, mask, w), epsilon_low=0.2, epsilon_high=0.2)
    loss.backward()
    # ratio == 1: clip inactive, d loss / d logp = -A * w  (plain REINFORCE with the loss_type weights)
    torch.testing.assert_close(lp.grad, -adv[:, None] * w)
    assert m["clip_region_sum"].item() == 0.0


def test_gspo_on_policy_gradient_matches_grpo_token_level():
    # with grpo weights (1/(|o_i| B)), the GSPO sequence ratio gives the same gradient at ratio 1
    logp, _, _, adv, mask = _random_batch(seed=3)
    w = weights_of(mask, "grpo")
    grads = []
    for level in ("token", "sequence"):
        lp = logp.clone().requires_grad_(True)
        loss, _ = policy_loss(Batch(lp, lp.detach(), adv, mask, w), epsilon_low=0.2, epsilon_high=0.2,
                              importance_sampling_level=level)
        loss.backward()
        grads.append(lp.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_grpo_weights_match_deepseekmath_eq3_loop():
    # DSM Eq. 3 written as an explicit loop: (1/G) sum_i (1/|o_i|) sum_t loss_{i,t}
    logp, old, _, adv, mask = _random_batch(seed=4)
    per_token = clipped_surrogate(torch.exp(logp - old), adv[:, None], 0.2, 0.2)
    loop = 0.0
    for i in range(mask.shape[0]):
        n_i = int(mask[i].sum())
        if n_i:
            loop += sum(per_token[i, t].item() for t in range(n_i)) / n_i
    loop /= mask.shape[0]
    loss, _ = policy_loss(Batch(logp, old, adv, mask, weights_of(mask, "grpo")), epsilon_low=0.2,
                          epsilon_high=0.2)
    assert loss.item() == pytest.approx(loop, abs=1e-12)
    assert math.isfinite(loss.item())
