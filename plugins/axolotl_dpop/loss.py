"""The DPO-Positive loss (Pal et al., 2024, "Smaug", Eq. 3 with the penalty inside beta(...)), and the
SLiC loss as the same paper defines it for its loss comparison (`slic_loss`, at the end).

    L_DPOP = -log sigmoid( beta * ( (log pi(y_w|x) - log pi_ref(y_w|x))
                                  - (log pi(y_l|x) - log pi_ref(y_l|x))
                                  - lam * max(0, log pi_ref(y_w|x) - log pi(y_w|x)) ) )

All log-probs are sums over completion tokens. The penalty is zero, with zero gradient, whenever the
policy's chosen log-prob is at or above the reference's. That includes exact equality, which is where
every run starts (policy = reference), so step 0 of DPOP is step 0 of DPO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpop_penalty(policy_chosen_logps: torch.Tensor, reference_chosen_logps: torch.Tensor) -> torch.Tensor:
    """max(0, log pi_ref(y_w|x) - log pi(y_w|x)) per example.

    ``torch.relu`` rather than ``torch.clamp(min=0)``: at exactly 0 relu's gradient is 0, clamp's is 1,
    and 0 is the value every run starts from."""
    return torch.relu(reference_chosen_logps - policy_chosen_logps)


def dpop_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example DPOP losses and the implicit rewards, shaped like the inputs (``[batch]``).

    Args:
        policy_chosen_logps: summed completion log-probs of the preferred answers under the policy.
        policy_rejected_logps: the same for the dispreferred answers.
        reference_chosen_logps / reference_rejected_logps: the same under the frozen reference.
        beta: the DPO temperature (paper: 0.3).
        lam: the DPOP penalty weight lambda >= 0 (paper: 50). ``lam=0`` is exactly DPO.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``; rewards are ``beta * (log pi - log pi_ref)``,
        detached, as TRL reports them.
    """
    if lam < 0:
        raise ValueError(f"dpop lambda must be >= 0, got {lam}")
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    penalty = dpop_penalty(policy_chosen_logps, reference_chosen_logps)
    logits = chosen_logratios - rejected_logratios - lam * penalty
    losses = -F.logsigmoid(beta * logits)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def slic_hinge(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """max(0, beta - log pi(y_w|x) + log pi(y_l|x)) per example (``torch.relu``: zero gradient once the
    margin reaches beta)."""
    return torch.relu(beta - (policy_chosen_logps - policy_rejected_logps))


def slic_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example SLiC losses as the Smaug paper writes them (after SLiC-HF, Zhao et al. 2023):

        L_SLiC = max(0, beta - log pi(y_w|x) + log pi(y_l|x)) - lam * log pi(y_ref|x),   y_ref = y_w

    No reference model: the hinge compares the policy's own sequence log-likelihoods (sums over completion
    tokens, like ``dpop_loss``) with the margin ``beta``, and the regulariser is the negative log-likelihood
    of the preferred completion.

    Args:
        policy_chosen_logps / policy_rejected_logps: summed completion log-probs under the policy.
        beta: the hinge margin in nats (> 0; the recipes' ``rl_beta``).
        lam: the regulariser weight lambda >= 0 (``slic_lambda``). ``lam=0`` is the bare hinge.

    Returns:
        ``(losses, hinge, nll)``: the per-example losses, and their two parts, ``max(0, ...)`` and
        ``-log pi(y_ref|x)`` (before the factor lam), both detached.
    """
    if not beta > 0:
        raise ValueError(f"slic beta (the hinge margin) must be > 0, got {beta}")
    if lam < 0:
        raise ValueError(f"slic lambda must be >= 0, got {lam}")
    hinge = slic_hinge(policy_chosen_logps, policy_rejected_logps, beta)
    nll = -policy_chosen_logps
    return hinge + lam * nll, hinge.detach(), nll.detach()
