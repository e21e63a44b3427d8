"""dpop_loss against hand-worked values of Eq. 3, and its gradient where the penalty switches."""

import math

import pytest
import torch
import torch.nn.functional as F

from axolotl_dpop.loss import dpop_loss, dpop_penalty

BETA, LAM = 0.3, 50.0


def t(*values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_hand_worked_values():
    # row 0: chosen fell 2 nats below the reference -> penalty 2 -> logits = -2 - (-1) - 50*2 = -101
    # row 1: chosen rose 1 nat above the reference -> no penalty -> logits = 1 - (-2) = 3
    # row 2: policy = reference everywhere -> logits 0 -> loss log 2
    pc, pr = t(-10.0, -7.0, -5.0), t(-12.0, -13.0, -5.0)
    rc, rr = t(-8.0, -8.0, -5.0), t(-11.0, -11.0, -5.0)
    losses, chosen_rewards, rejected_rewards = dpop_loss(pc, pr, rc, rr, BETA, LAM)
    expected = [math.log1p(math.exp(0.3 * 101)), math.log1p(math.exp(-0.3 * 3)), math.log(2)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-12)
    assert losses[1].item() == pytest.approx(0.3411538, abs=1e-6)
    assert chosen_rewards.tolist() == pytest.approx([-0.6, 0.3, 0.0])
    assert rejected_rewards.tolist() == pytest.approx([-0.3, -0.6, 0.0])
    assert not chosen_rewards.requires_grad


def test_lambda_zero_is_dpo():
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(16, dtype=torch.float64) * 5 - 20 for _ in range(4))
    losses, _, _ = dpop_loss(pc, pr, rc, rr, BETA, 0.0)
    dpo = -F.logsigmoid(BETA * ((pc - rc) - (pr - rr)))
    assert torch.allclose(losses, dpo)


def _grads(lam, penalty_fn=None, pc_value=-5.0):
    pc, pr = t(pc_value), t(-6.0)
    rc, rr = torch.tensor([-5.0], dtype=torch.float64), torch.tensor([-6.0], dtype=torch.float64)
    if penalty_fn is None:
        loss = dpop_loss(pc, pr, rc, rr, BETA, lam)[0].sum()
    else:  # the same formula with a different penalty, to show the test would catch it
        logits = (pc - rc) - (pr - rr) - lam * penalty_fn(rc - pc)
        loss = -F.logsigmoid(BETA * logits).sum()
    loss.backward()
    return pc.grad.item(), pr.grad.item()


def test_gradient_at_policy_equals_reference_is_dpos():
    dpop = _grads(LAM)
    dpo = _grads(0.0)
    assert dpop == dpo
    assert dpo[0] == pytest.approx(-BETA / 2)  # d/dpc of -log sigmoid(beta*x) at x=0
    # clamp(min=0) has gradient 1 at 0 and would scale the chosen gradient by (1 + lambda):
    clamped = _grads(LAM, penalty_fn=lambda x: torch.clamp(x, min=0))
    assert clamped[0] == pytest.approx(-BETA / 2 * (1 + LAM))
    assert clamped != dpop


def test_penalty_is_zero_with_zero_gradient_at_and_above_reference():
    rc = torch.tensor([-5.0, -5.0, -5.0], dtype=torch.float64)
    pc = t(-5.0, -4.0, -0.5)
    penalty = dpop_penalty(pc, rc)
    penalty.sum().backward()
    assert penalty.tolist() == [0.0, 0.0, 0.0]
    assert pc.grad.tolist() == [0.0, 0.0, 0.0]


def test_penalty_switches_on_below_reference():
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    above = _grads(LAM, pc_value=-4.999)
    assert above[0] == pytest.approx(_grads(0.0, pc_value=-4.999)[0])  # above: plain DPO
    # 0.001 below the reference: logits = -0.001 - 50*0.001 and the chosen gradient gains a factor (1 + lambda)
    below = _grads(LAM, pc_value=-5.001)
    assert below[0] == pytest.approx(-BETA * sigmoid(BETA * 0.051) * (1 + LAM), rel=1e-9)
    assert below[1] == pytest.approx(BETA * sigmoid(BETA * 0.051), rel=1e-9)  # rejected: unchanged form
    pc, rc = t(-7.5), torch.tensor([-5.0], dtype=torch.float64)
    assert dpop_penalty(pc, rc).item() == pytest.approx(2.5)


def test_negative_lambda_is_refused():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="lambda must be >= 0"):
        dpop_loss(x, x, x, x, BETA, -1.0)
