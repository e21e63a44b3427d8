"""DPOPTrainer: axolotl's DPO trainer (TRL's DPOTrainer underneath) with the DPOP loss.

TRL 1.9 has no per-loss hook, so this overrides the public ``compute_loss`` and reuses the public
``compute_ref_log_probs`` for the reference pass. Everything else — tokenisation, collation, LoRA
(reference = adapter disabled), precomputed reference log-probs, DeepSpeed, gradient accumulation —
is TRL's and axolotl's own code path.
"""

from __future__ import annotations

import torch
from axolotl.core.trainers.dpo.trainer import AxolotlDPOTrainer
# Call TRL's helpers through its DPO module: axolotl may swap them for fused kernels there, and DPOP
# should compute exactly what DPO computes.
from trl.trainer import dpo_trainer as trl_dpo

from axolotl_dpop.loss import dpop_loss, dpop_penalty

# Columns the collator adds that the model's forward must not see.
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


class DPOPTrainer(AxolotlDPOTrainer):
    tag_names = ["axolotl", "dpo", "dpop"]

    # Set by DPOPPlugin.post_trainer_create from the validated config (`dpop_lambda`).
    dpop_lambda: float | None = None

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
                f"rl: dpop defines its own loss and cannot be combined with DPO option(s) {bad}; "
                "remove them from the config (DPOP is the sigmoid DPO loss plus the positive penalty)."
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.dpop_lambda is None:
            raise RuntimeError("DPOPTrainer.dpop_lambda is unset: list axolotl_dpop.DPOPPlugin in `plugins:`.")
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

        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_model = self.ref_model if self.ref_model is not None else model  # PEFT: adapter disabled inside
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(ref_model, inputs)

        losses, chosen_rewards, rejected_rewards = dpop_loss(
            chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, self.beta, self.dpop_lambda
        )
        loss = losses.mean()
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss

        with torch.no_grad():
            penalty = dpop_penalty(chosen_logps.detach(), ref_chosen_logps)
            self._log_metrics(mode, inputs, shift_logits.detach(), shift_labels, shift_mask,
                              chosen_logps.detach(), rejected_logps.detach(),
                              chosen_rewards, rejected_rewards, penalty)
        return (loss, outputs) if return_outputs else loss

    def _log_metrics(self, mode, inputs, shift_logits, shift_labels, shift_mask,
                     chosen_logps, rejected_logps, chosen_rewards, rejected_rewards, penalty):
        """TRL's usual DPO metrics (same names, same averaging across ranks) plus the DPOP ones."""
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

        for name, value in {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": chosen_logps,
            "logps/rejected": rejected_logps,
            # How far (nats) the policy's chosen log-prob sits below the reference's, and how often:
            # the failure mode DPOP exists to prevent.
            "dpop/penalty": penalty,
            "dpop/active_fraction": (penalty > 0).float(),
        }.items():
            metrics[name].append(self.accelerator.gather(value).mean().item())
