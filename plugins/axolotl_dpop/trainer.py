"""DPOPTrainer and SLiCTrainer: axolotl's DPO trainer (TRL's DPOTrainer underneath) with the DPOP loss, or
with the Smaug paper's SLiC loss.

TRL 1.9 has no per-loss hook, so this overrides the public ``compute_loss`` and reuses the public
``compute_ref_log_probs`` for the reference pass. Everything else — tokenisation, collation, LoRA
(reference = adapter disabled), precomputed reference log-probs, DeepSpeed, gradient accumulation —
is TRL's and axolotl's own code path. ``compute_loss`` computes the per-sequence log-probs once and hands
them to the loss named by ``loss_name`` (``_LOSSES``, the one place a loss is chosen).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch
from axolotl.core.trainers.dpo.trainer import AxolotlDPOTrainer
# Call TRL's helpers through its DPO module: axolotl may swap them for fused kernels there, and DPOP
# should compute exactly what DPO computes.
from trl.trainer import dpo_trainer as trl_dpo

from axolotl_dpop.loss import dpop_loss, dpop_penalty, slic_loss

# Columns the collator adds that the model's forward must not see.
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


class PreferenceLoss(NamedTuple):
    losses: torch.Tensor            # [batch], differentiable
    chosen_rewards: torch.Tensor    # [batch], detached: TRL's rewards/* metrics
    rejected_rewards: torch.Tensor
    metrics: dict[str, torch.Tensor]  # name -> [batch] values, averaged over pairs and ranks when logged


def _dpop(trainer, model, inputs, chosen_logps, rejected_logps) -> PreferenceLoss:
    if trainer.precompute_ref_logps:
        ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
    else:
        ref_model = trainer.ref_model if trainer.ref_model is not None else model  # PEFT: adapter disabled inside
        ref_chosen_logps, ref_rejected_logps = trainer.compute_ref_log_probs(ref_model, inputs)
    losses, chosen_rewards, rejected_rewards = dpop_loss(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, trainer.beta, trainer.dpop_lambda
    )
    penalty = dpop_penalty(chosen_logps.detach(), ref_chosen_logps)
    # How far (nats) the policy's chosen log-prob sits below the reference's, and how often: the failure mode
    # DPOP exists to prevent.
    return PreferenceLoss(losses, chosen_rewards, rejected_rewards,
                          {"dpop/penalty": penalty, "dpop/active_fraction": (penalty > 0).float()})


def _slic(trainer, model, inputs, chosen_logps, rejected_logps) -> PreferenceLoss:
    # No reference anywhere: the "rewards" are the policy's own sequence log-probs, so rewards/margins is the
    # quantity the hinge compares with beta.
    losses, hinge, nll = slic_loss(chosen_logps, rejected_logps, trainer.beta, trainer.slic_lambda)
    return PreferenceLoss(losses, chosen_logps.detach(), rejected_logps.detach(),
                          {"slic/hinge": hinge, "slic/active_fraction": (hinge > 0).float(),
                           "slic/regulariser": nll})


_LOSSES = {"dpop": _dpop, "slic": _slic}


class DPOPTrainer(AxolotlDPOTrainer):
    tag_names = ["axolotl", "dpo", "dpop"]
    loss_name = "dpop"

    # Set by DPOPPlugin.post_trainer_create from the validated config (`dpop_lambda` / `slic_lambda`).
    dpop_lambda: float | None = None
    slic_lambda: float | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        unsupported = {
            "loss_type": list(self.loss_types) != ["sigmoid"],
            "use_weighting": bool(self.use_weighting),
            "use_liger_kernel": bool(self.use_liger_kernel),
            "ld_alpha": self.ld_alpha is not None,
            "f_divergence_type": self.f_divergence_type != "reverse_kl",
            "label_smoothing": bool(getattr(self.args, "label_smoothing", 0.0)),
        }
        bad = [name for name, is_bad in unsupported.items() if is_bad]
        if bad:
            raise ValueError(
                f"rl: {self.loss_name} defines its own loss and cannot be combined with DPO option(s) {bad}; "
                "remove them from the config."
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        lam_name = f"{self.loss_name}_lambda"
        if getattr(self, lam_name) is None:
            raise RuntimeError(f"{type(self).__name__}.{lam_name} is unset: list axolotl_dpop.DPOPPlugin in "
                               "`plugins:`.")
        mode = "train" if self.model.training else "eval"

        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        outputs = model(**model_kwargs)

        # The batch is [chosen; rejected]; positions t predict token t+1.
        shift_logits = outputs.logits[..., :-1, :]
        shift_labels = inputs["input_ids"][..., 1:]
        shift_mask = inputs["completion_mask"][..., 1:]
        per_token_logps = trl_dpo.selective_log_softmax(shift_logits, shift_labels)
        per_token_logps = per_token_logps.masked_fill(shift_mask == 0, 0.0)
        chosen_logps, rejected_logps = per_token_logps.sum(dim=1).chunk(2, dim=0)

        result = _LOSSES[self.loss_name](self, model, inputs, chosen_logps, rejected_logps)
        loss = result.losses.mean()
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss

        with torch.no_grad():
            self._log_metrics(mode, inputs, shift_logits.detach(), shift_labels, shift_mask,
                              chosen_logps.detach(), rejected_logps.detach(), result)
        return (loss, outputs) if return_outputs else loss

    def _log_metrics(self, mode, inputs, shift_logits, shift_labels, shift_mask,
                     chosen_logps, rejected_logps, result: PreferenceLoss):
        """TRL's usual DPO metrics (same names, same averaging across ranks) plus the loss's own ones."""
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]

        def token_weighted_mean(total, count):
            total, count = gather(total).sum(), gather(count).sum()
            return (total / count).item() if count > 0 else 0.0

        metrics["entropy"].append(token_weighted_mean(
            (trl_dpo.entropy_from_logits(shift_logits) * shift_mask).sum(), shift_mask.sum()))
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item()
        metrics["num_tokens"] = [self._total_train_tokens]

        chosen_logits, rejected_logits = shift_logits.chunk(2, dim=0)
        chosen_mask, rejected_mask = shift_mask.chunk(2, dim=0)
        metrics["logits/chosen"].append(token_weighted_mean(
            chosen_logits[chosen_mask.bool()].mean(-1).sum(), chosen_mask.sum()))
        metrics["logits/rejected"].append(token_weighted_mean(
            rejected_logits[rejected_mask.bool()].mean(-1).sum(), rejected_mask.sum()))
        chosen_labels = shift_labels.chunk(2, dim=0)[0]
        correct = ((chosen_logits.argmax(dim=-1) == chosen_labels) & chosen_mask.bool()).sum()
        metrics["mean_token_accuracy"].append(token_weighted_mean(correct, chosen_mask.sum()))

        chosen_rewards, rejected_rewards = result.chosen_rewards, result.rejected_rewards
        for name, value in {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": chosen_logps,
            "logps/rejected": rejected_logps,
            **result.metrics,
        }.items():
            metrics[name].append(self.accelerator.gather(value).mean().item())


@contextmanager
def _no_reference_model_from_trl():
    """TRL's DPOTrainer loads a second copy of the policy from its path when it gets no `ref_model` (full
    fine-tune, no precomputed log-probs). SLiC has no reference, so that load is turned into None while
    SLiCTrainer.__init__ runs. axolotl passes the policy as a module, so this is the only call it reaches."""
    original = trl_dpo.create_model_from_path
    trl_dpo.create_model_from_path = lambda *args, **kwargs: None
    try:
        yield
    finally:
        trl_dpo.create_model_from_path = original


class SLiCTrainer(DPOPTrainer):
    """The Smaug paper's SLiC (``axolotl_dpop.loss.slic_loss``): no reference model is kept (one that axolotl
    or a caller passes is dropped) and no reference forward ever runs."""

    tag_names = ["axolotl", "dpo", "slic"]
    loss_name = "slic"

    def __init__(self, *args, **kwargs):
        if "ref_model" in kwargs:
            kwargs["ref_model"] = None
        elif len(args) > 1:
            args = (args[0], None, *args[2:])
        training_args = kwargs.get("args")
        if training_args is not None and getattr(training_args, "precompute_ref_log_probs", False):
            raise ValueError("rl: slic uses no reference model; remove precompute_ref_log_probs.")
        with _no_reference_model_from_trl():
            super().__init__(*args, **kwargs)
        if self.ref_model is not None or getattr(self.args, "sync_ref_model", False):
            raise ValueError("rl: slic uses no reference model; remove ref_model / sync_ref_model.")

    def compute_ref_log_probs(self, model, inputs):
        raise RuntimeError("rl: slic has no reference model; nothing may ask for reference log-probs.")
