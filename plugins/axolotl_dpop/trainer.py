"""DPOPTrainer and SLiCTrainer: axolotl's DPO trainer (TRL's DPOTrainer underneath) with the DPOP loss, or
with the Smaug paper's SLiC loss.

TRL 1.9 has no per-loss hook, so this overrides the public ``compute_loss`` and reuses the public
``compute_ref_log_probs`` for the reference pass. Everything else — tokenisation, collation, LoRA
(reference = adapter disabled), precomputed reference log-probs, DeepSpeed, gradient accumulation —
is TRL's and axolotl's own code path. ``compute_loss`` computes the per-sequence log-probs once and hands
them to the loss named by ``loss_name`` (``_LOSSES``, the one place a loss is chosen).

With ``dpop_chunked_logps`` (training argument, from the YAML) the policy and reference log-probs — in
training, evaluation and the precompute pass — come from the last hidden states through the token-chunked
head of :mod:`axolotl_dpop.chunked_logps` instead of the full logits; the loss, the rewards/logps/dpop
metrics and TRL's logit metrics (entropy, logits/chosen, logits/rejected, mean_token_accuracy) are the
same numbers, the latter computed chunk by chunk in the same pass. With ``precompute_ref_log_probs`` the
reference log-probs are cached on disk (:mod:`axolotl_dpop.ref_cache`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch
from axolotl.core.trainers.dpo.trainer import AxolotlDPOTrainer
from axolotl.utils.logging import get_logger

# Call TRL's helpers through its DPO module: axolotl may swap them for fused kernels there, and DPOP
# should compute exactly what DPO computes.
from trl.trainer import dpo_trainer as trl_dpo

from axolotl_dpop import ref_cache
from axolotl_dpop.chunked_logps import DEFAULT_CHUNK_SIZE, check_chunkable, completion_logps, last_hidden_states
from axolotl_dpop.loss import dpop_loss, dpop_penalty, slic_loss

LOG = get_logger(__name__)

# Columns the collator adds that the model's forward must not see.
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


def _model_kwargs(inputs: dict) -> dict:
    """The batch's tensors the model's forward takes (no KV cache: one forward over whole sequences)."""
    return {**{k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}, "use_cache": False}


class PreferenceLoss(NamedTuple):
    losses: torch.Tensor  # [batch], differentiable
    chosen_rewards: torch.Tensor  # [batch], detached: TRL's rewards/* metrics
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
    return PreferenceLoss(
        losses,
        chosen_rewards,
        rejected_rewards,
        {"dpop/penalty": penalty, "dpop/active_fraction": (penalty > 0).float()},
    )


def _slic(trainer, model, inputs, chosen_logps, rejected_logps) -> PreferenceLoss:
    # No reference anywhere: the "rewards" are the policy's own sequence log-probs, so rewards/margins is the
    # quantity the hinge compares with beta.
    losses, hinge, nll = slic_loss(chosen_logps, rejected_logps, trainer.beta, trainer.slic_lambda)
    return PreferenceLoss(
        losses,
        chosen_logps.detach(),
        rejected_logps.detach(),
        {"slic/hinge": hinge, "slic/active_fraction": (hinge > 0).float(), "slic/regulariser": nll},
    )


_LOSSES = {"dpop": _dpop, "slic": _slic}


class DPOPTrainer(AxolotlDPOTrainer):
    tag_names = ["axolotl", "dpo", "dpop"]
    loss_name = "dpop"

    # Set by DPOPPlugin.post_trainer_create from the validated config (`dpop_lambda` / `slic_lambda`).
    dpop_lambda: float | None = None
    slic_lambda: float | None = None

    def __init__(self, *args, **kwargs):
        # Read before TRL's __init__, which runs the precompute pass (and with it compute_ref_log_probs).
        training_args = kwargs["args"] if "args" in kwargs else args[2]
        self.dpop_chunked_logps = bool(getattr(training_args, "dpop_chunked_logps", False))
        self.dpop_logps_chunk_size = int(getattr(training_args, "dpop_logps_chunk_size", DEFAULT_CHUNK_SIZE))
        self.dpop_ref_logps_cache_dir = getattr(training_args, "dpop_ref_logps_cache_dir", None)
        self._reference_digest = None
        if self.dpop_chunked_logps:
            model = kwargs["model"] if "model" in kwargs else args[0]
            check_chunkable(model)
            LOG.info(f"DPOP: chunked log-probs, {self.dpop_logps_chunk_size} completion tokens per chunk of logits.")
        super().__init__(*args, **kwargs)
        # The DPO options these losses replace are refused when the config is read (plugin.validate_plugin_config).

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        lam_name = f"{self.loss_name}_lambda"
        if getattr(self, lam_name) is None:
            raise RuntimeError(
                f"{type(self).__name__}.{lam_name} is unset: list axolotl_dpop.DPOPPlugin in `plugins:`."
            )
        mode = "train" if self.model.training else "eval"

        model_kwargs = _model_kwargs(inputs)
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True

        # The batch is [chosen; rejected]; positions t predict token t+1.
        if self.dpop_chunked_logps:
            outputs, logps, stats = self._chunked_logps(model, model_kwargs, inputs, with_stats=True)
            logit_sums = _logit_sums_from_stats(stats, half=inputs["input_ids"].shape[0] // 2)
        else:
            outputs = model(**model_kwargs)
            shift_logits = outputs.logits[..., :-1, :]
            shift_labels = inputs["input_ids"][..., 1:]
            shift_mask = inputs["completion_mask"][..., 1:]
            per_token_logps = trl_dpo.selective_log_softmax(shift_logits, shift_labels)
            per_token_logps = per_token_logps.masked_fill(shift_mask == 0, 0.0)
            logps = per_token_logps.sum(dim=1)
            with torch.no_grad():
                logit_sums = _logit_sums_from_logits(shift_logits.detach(), shift_labels, shift_mask)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)

        result = _LOSSES[self.loss_name](self, model, inputs, chosen_logps, rejected_logps)
        loss = result.losses.mean()
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss

        with torch.no_grad():
            self._log_metrics(mode, inputs, logit_sums, chosen_logps.detach(), rejected_logps.detach(), result)
        return (loss, outputs) if return_outputs else loss

    def compute_ref_log_probs(self, model, inputs):
        """TRL's reference pass (used live and by the precompute pass); chunked with dpop_chunked_logps."""
        if not self.dpop_chunked_logps:
            return super().compute_ref_log_probs(model, inputs)
        model_kwargs = _model_kwargs(inputs)
        with (
            torch.no_grad(),
            trl_dpo.disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
        ):
            if self.ref_model is None and trl_dpo.is_peft_model(self.model):
                unwrapped = self.accelerator.unwrap_model(self.model)
                with trl_dpo.use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                    _, logps, _ = self._chunked_logps(model, model_kwargs, inputs)
            else:
                _, logps, _ = self._chunked_logps(model, model_kwargs, inputs)
        return logps.chunk(2, dim=0)

    def _chunked_logps(self, model, model_kwargs, inputs, with_stats: bool = False):
        """(model outputs, summed completion log-probs, head stats) through the token-chunked head."""
        outputs, hidden = last_hidden_states(model, model_kwargs)
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        logps, stats = completion_logps(
            head,
            hidden,
            inputs["input_ids"],
            inputs["completion_mask"],
            self.dpop_logps_chunk_size,
            with_stats=with_stats,
        )
        return outputs, logps, stats

    def _precompute_ref_logps(self, dataset, name, batch_size):
        """TRL 1.9's precompute pass (a private method, pinned version), with the on-disk cache of
        :mod:`axolotl_dpop.ref_cache` in front of it instead of TRL's own (see there why)."""
        from datasets import Dataset, IterableDataset, concatenate_datasets

        if isinstance(dataset, IterableDataset) or not self.dpop_ref_logps_cache_dir:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        components = self._reference_cache_components(dataset)
        key = ref_cache.cache_key(components)
        path = ref_cache.cache_path(self.dpop_ref_logps_cache_dir, key)
        cached = [ref_cache.load(path, len(dataset)) if self.accelerator.is_main_process else None]
        trl_dpo.broadcast_object_list(cached, from_process=0)  # every rank takes the same branch
        if cached[0] is not None:
            LOG.info(
                f"DPOP: reference log-probs for the {name} dataset ({len(dataset)} pairs) read from the "
                f"cache {path}; no reference forward."
            )
            chosen, rejected = cached[0]
        else:
            chosen, rejected = self._run_reference_pass(dataset, name, batch_size)
            if self.accelerator.is_main_process:
                ref_cache.save(path, chosen, rejected, components)
                LOG.info(f"DPOP: reference log-probs for the {name} dataset cached in {path}.")
            self.accelerator.wait_for_everyone()
        columns = Dataset.from_dict({"ref_chosen_logps": chosen.tolist(), "ref_rejected_logps": rejected.tolist()})
        return concatenate_datasets([dataset, columns], axis=1)

    def _run_reference_pass(self, dataset, name, batch_size):
        """The reference forward over ``dataset`` in order, as TRL 1.9's precompute pass runs it."""
        from torch.utils.data import DataLoader

        loader = self.accelerator.prepare(
            DataLoader(
                dataset,
                batch_size=batch_size,
                collate_fn=self.data_collator,
                shuffle=False,
                num_workers=self.args.dataloader_num_workers,
                pin_memory=self.args.dataloader_pin_memory,
            )
        )
        # Before `train` prepares the model: under DeepSpeed its parameters are still on the CPU (ZeRO-1/2) or
        # partitioned (ZeRO-3), so the reference forward goes through an inference engine, built once (TRL's).
        if self.ref_model is None and self.is_deepspeed_enabled:
            if self._precompute_engine is None:
                self._precompute_engine = trl_dpo.prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        else:
            model = self.ref_model or self.model
        chosen, rejected = [], []
        for batch in trl_dpo.tqdm(loader, desc=f"Computing reference log probs for {name} dataset"):
            batch_chosen, batch_rejected = self.accelerator.gather_for_metrics(self.compute_ref_log_probs(model, batch))
            chosen.append(batch_chosen.float().cpu())
            rejected.append(batch_rejected.float().cpu())
        return torch.cat(chosen), torch.cat(rejected)

    def _reference_cache_components(self, dataset) -> dict:
        reference = self.ref_model or self.model
        unwrapped = self.accelerator.unwrap_model(reference)
        if self._reference_digest is None:
            adapters = tuple(getattr(unwrapped, "peft_config", {}) or ())
            tensors = ref_cache.reference_tensors(unwrapped, adapters, keep_adapter="ref")
            state = self.accelerator.state
            gather = torch.distributed.all_gather_object if state.num_processes > 1 else None
            self._reference_digest = ref_cache.weights_digest(tensors, state.process_index, state.num_processes, gather)
        collator = self.data_collator
        return {
            "reference": {
                "weights": self._reference_digest,
                **ref_cache.model_settings(
                    unwrapped.get_base_model() if trl_dpo.is_peft_model(unwrapped) else unwrapped
                ),
            },
            "data": ref_cache.dataset_digest(dataset),
            "collation": {
                "collator": type(collator).__name__,
                **{
                    k: getattr(collator, k, None)
                    for k in ("max_length", "truncation_mode", "pad_to_multiple_of", "pad_token_id")
                },
                "padding_free": getattr(self.args, "padding_free", None),
                "disable_dropout": getattr(self.args, "disable_dropout", None),
            },
        }

    def _log_metrics(self, mode, inputs, logit_sums, chosen_logps, rejected_logps, result: PreferenceLoss):
        """TRL's usual DPO metrics (same names, same averaging across ranks) plus the loss's own ones."""
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]

        def token_weighted_mean(total, count):
            total, count = gather(total).sum(), gather(count).sum()
            return (total / count).item() if count > 0 else 0.0

        metrics["entropy"].append(token_weighted_mean(logit_sums["entropy"], logit_sums["tokens"]))
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item()
        metrics["num_tokens"] = [self._total_train_tokens]
        metrics["logits/chosen"].append(token_weighted_mean(logit_sums["chosen_logits"], logit_sums["chosen_tokens"]))
        metrics["logits/rejected"].append(
            token_weighted_mean(logit_sums["rejected_logits"], logit_sums["rejected_tokens"])
        )
        metrics["mean_token_accuracy"].append(
            token_weighted_mean(logit_sums["chosen_correct"], logit_sums["chosen_tokens"])
        )

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


def _logit_sums_from_logits(shift_logits, shift_labels, shift_mask) -> dict:
    """Sums over completion tokens behind TRL's logit metrics, from the full logits [2B, T-1, V]."""
    chosen_logits, rejected_logits = shift_logits.chunk(2, dim=0)
    chosen_mask, rejected_mask = shift_mask.chunk(2, dim=0)
    chosen_labels = shift_labels.chunk(2, dim=0)[0]
    return {
        "entropy": (trl_dpo.entropy_from_logits(shift_logits) * shift_mask).sum(),
        "tokens": shift_mask.sum(),
        "chosen_logits": chosen_logits[chosen_mask.bool()].mean(-1).sum(),
        "chosen_tokens": chosen_mask.sum(),
        "rejected_logits": rejected_logits[rejected_mask.bool()].mean(-1).sum(),
        "rejected_tokens": rejected_mask.sum(),
        "chosen_correct": ((chosen_logits.argmax(dim=-1) == chosen_labels) & chosen_mask.bool()).sum(),
    }


def _logit_sums_from_stats(stats, half: int) -> dict:
    """The same sums from the chunked head's per-token stats (rows < half are the chosen answers)."""
    chosen = stats.row < half
    rejected = ~chosen
    return {
        "entropy": stats.entropy.sum(),
        "tokens": torch.tensor(stats.row.numel(), device=stats.row.device),
        "chosen_logits": stats.logit_mean[chosen].sum(),
        "chosen_tokens": chosen.sum(),
        "rejected_logits": stats.logit_mean[rejected].sum(),
        "rejected_tokens": rejected.sum(),
        "chosen_correct": (stats.correct & chosen).sum(),
    }
