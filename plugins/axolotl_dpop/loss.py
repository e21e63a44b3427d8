"""The DPO-Positive loss (Pal et al., 2024, "Smaug", Eq. 3, the penalty inside beta(...)), and the paper's SLiC.

    L_DPOP = -log sigmoid( beta * ( (log pi(y_w|x) - log pi_ref(y_w|x))
                                  - (log pi(y_l|x) - log pi_ref(y_l|x))
                                  - lam * max(0, log pi_ref(y_w|x) - log pi(y_w|x)) ) )

    L_SLiC = max(0, beta - log pi(y_w|x) + log pi(y_l|x)) - lam * log pi(y_w|x)      (no reference model)

All log-probs are sums over completion tokens, shaped ``[batch]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpop_penalty(policy_chosen_logps: torch.Tensor, reference_chosen_logps: torch.Tensor) -> torch.Tensor:
    """max(0, log pi_ref(y_w|x) - log pi(y_w|x)). ``relu``, not ``clamp(min=0)``: at 0, where every run starts
    (policy = reference), relu's gradient is 0 and clamp's is 1, so step 0 of DPOP is step 0 of DPO."""
    return torch.relu(reference_chosen_logps - policy_chosen_logps)


def dpop_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(losses, chosen_rewards, rejected_rewards)`` per pair; the rewards ``beta * (log pi - log pi_ref)`` are
    detached, as TRL reports them. beta: the DPO temperature (paper: 0.3); lam >= 0 (paper: 50; 0 is DPO)."""
    if lam < 0:
        raise ValueError(f"dpop lambda must be >= 0, got {lam}")
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    penalty = dpop_penalty(policy_chosen_logps, reference_chosen_logps)
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios - lam * penalty))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def slic_loss(
    policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, beta: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(losses, hinge, nll)`` per pair, as the Smaug paper writes SLiC (after SLiC-HF, Zhao et al. 2023): the
    hinge compares the policy's own log-likelihoods with the margin beta (nats, > 0); the regulariser is the
    negative log-likelihood of the preferred completion, weighted by lam >= 0. hinge and nll are detached."""
    if not beta > 0:
        raise ValueError(f"slic beta (the hinge margin) must be > 0, got {beta}")
    if lam < 0:
        raise ValueError(f"slic lambda must be >= 0, got {lam}")
    hinge = torch.relu(beta - (policy_chosen_logps - policy_rejected_logps))  # zero gradient once the margin is met
    nll = -policy_chosen_logps
    return hinge + lam * nll, hinge.detach(), nll.detach()
