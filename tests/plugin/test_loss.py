"""dpop_loss against hand-worked values of Eq. 3, and its gradient where the penalty switches; slic_loss (the
paper's SLiC) against hand-worked values and its gradient where the hinge switches."""

import math

import pytest
import torch
import torch.nn.functional as F

from axolotl_dpop.loss import dpop_loss, dpop_penalty, slic_loss

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


# --- SLiC: max(0, beta - log p(y_w) + log p(y_l)) - lam * log p(y_ref), y_ref = y_w, no reference model ---


def test_slic_hand_worked_values():
    # beta 0.3, lam 0.1
    # row 0: margin -10 - (-12) = 2 >= 0.3 -> hinge 0;            nll 10 -> loss 0   + 0.1*10 = 1.0
    # row 1: margin -7 - (-6.9) = -0.1  -> hinge 0.3 + 0.1 = 0.4; nll 7  -> loss 0.4 + 0.1*7  = 1.1
    # row 2: margin -5 - (-5.2) = 0.2   -> hinge 0.3 - 0.2 = 0.1; nll 5  -> loss 0.1 + 0.1*5  = 0.6
    pc, pr = t(-10.0, -7.0, -5.0), t(-12.0, -6.9, -5.2)
    losses, hinge, nll = slic_loss(pc, pr, 0.3, 0.1)
    assert losses.tolist() == pytest.approx([1.0, 1.1, 0.6], abs=1e-12)
    assert hinge.tolist() == pytest.approx([0.0, 0.4, 0.1], abs=1e-12)
    assert nll.tolist() == pytest.approx([10.0, 7.0, 5.0])
    assert not hinge.requires_grad and not nll.requires_grad
    losses.sum().backward()
    # d/d log p(y_w): -1 from an active hinge, -lam from the regulariser; d/d log p(y_l): +1 while active
    assert pc.grad.tolist() == pytest.approx([-0.1, -1.1, -1.1])
    assert pr.grad.tolist() == pytest.approx([0.0, 1.0, 1.0])


def test_slic_is_not_reference_normalised_unlike_trls_hinge():
    # TRL's hinge: max(0, 1 - beta*[(pc - rc) - (pr - rr)]). The policy prefers y_w by 2 nats, the reference by 6:
    # the paper's SLiC sees the policy's own margin (2 >= beta: hinge off); TRL's sees 2 - 6 = -4: 1 + 0.3*4 = 2.2.
    pc, pr, rc, rr = t(-10.0), t(-12.0), t(-6.0), t(-12.0)
    _, hinge, _ = slic_loss(pc, pr, 0.3, 0.0)
    trl_hinge = torch.relu(1 - 0.3 * ((pc - rc) - (pr - rr)))
    assert hinge.item() == 0.0 and trl_hinge.item() == pytest.approx(2.2)


def test_slic_hinge_switches_off_at_the_margin_with_zero_gradient():
    pc, pr = t(-5.0, -5.0), t(-5.25, -5.125)  # margin exactly beta (0.25, exact in binary), then inside it
    losses, hinge, _ = slic_loss(pc, pr, 0.25, 0.0)
    losses.sum().backward()
    assert hinge[0].item() == 0.0 and pc.grad[0].item() == 0.0 and pr.grad[0].item() == 0.0
    assert hinge[1].item() == 0.125 and pc.grad[1].item() == -1.0 and pr.grad[1].item() == 1.0


@pytest.mark.parametrize(
    "beta, lam, message", [(0.3, -0.1, "lambda must be >= 0"), (0.0, 0.1, "must be > 0"), (-1.0, 0.1, "must be > 0")]
)
def test_slic_bad_parameters_are_refused(beta, lam, message):
    x = torch.zeros(1)
    with pytest.raises(ValueError, match=message):
        slic_loss(x, x, beta, lam)
