"""DPOPTrainer and SLiCTrainer: axolotl's DPO trainer (TRL's DPOTrainer underneath) with the DPOP or the Smaug
paper's SLiC loss. TRL 1.9 has no per-loss hook, so this overrides the public ``compute_loss`` and
``compute_ref_log_probs``; both take their log-probs from ``_sequence_logps``."""

from __future__ import annotations

from unittest import mock

import torch
from axolotl.core.trainers.dpo.trainer import AxolotlDPOTrainer
from axolotl.utils.logging import get_logger

# Call TRL's helpers through its DPO module: axolotl may swap them for fused kernels there, and DPOP
# should compute exactly what DPO computes.
from trl.trainer import dpo_trainer as trl_dpo

from axolotl_dpop import ref_cache
from axolotl_dpop.chunked_logps import HeadStats, check_chunkable, check_head, completion_logps, last_hidden_states
from axolotl_dpop.loss import dpop_loss, dpop_penalty, slic_loss
from axolotl_dpop.shared_prefix import GroupedBatchSampler, check_shared_prefix, shared_prefix_logps

LOG = get_logger(__name__)

# Columns the collator adds that the model's forward must not see.
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}


# A loss: (trainer, model, batch, chosen logps, rejected logps) -> (losses [B], chosen and rejected rewards [B],
# detached, for TRL's rewards/* metrics, {metric: [B] values}).
def _dpop(trainer, model, inputs, chosen_logps, rejected_logps):
    if trainer.precompute_ref_logps:
        ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
    else:
        ref_model = trainer.ref_model if trainer.ref_model is not None else model  # PEFT: adapter disabled inside
        ref_chosen_logps, ref_rejected_logps = trainer.compute_ref_log_probs(ref_model, inputs)
    losses, chosen_rewards, rejected_rewards = dpop_loss(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, trainer.beta, trainer.args.dpop_lambda
    )
    # How far (nats) the policy's chosen log-prob sits below the reference's, and how often: the failure mode
    # DPOP exists to prevent.
    penalty = dpop_penalty(chosen_logps.detach(), ref_chosen_logps)
    return losses, chosen_rewards, rejected_rewards, {"dpop/penalty": penalty, "dpop/active_fraction": penalty > 0}


def _slic(trainer, model, inputs, chosen_logps, rejected_logps):
    # No reference: the "rewards" are the policy's own log-probs, so rewards/margins is what the hinge compares.
    losses, hinge, nll = slic_loss(chosen_logps, rejected_logps, trainer.beta, trainer.args.slic_lambda)
    metrics = {"slic/hinge": hinge, "slic/active_fraction": hinge > 0, "slic/regulariser": nll}
    return losses, chosen_logps.detach(), rejected_logps.detach(), metrics


class DPOPTrainer(AxolotlDPOTrainer):
    tag_names = ["axolotl", "dpo", "dpop"]
    loss_name = "dpop"
    _loss = staticmethod(_dpop)
    _head_checked = False  # the model is checked once, on its first batch (chunked head, shared forward)
    _reference_digest = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        lam = getattr(self.args, f"{self.loss_name}_lambda")
        reference = None if self.ref_model is None else type(self.ref_model).__name__
        LOG.info(f"{self.loss_name.upper()}: beta={self.beta} lambda={lam}; reference model: {reference}")

    def _sequence_logps(self, model, inputs, with_stats: bool = False, **model_kwargs):
        """(model outputs, summed completion log-probs [2B], HeadStats for TRL's logit metrics or None) of a TRL
        batch, which is [chosen; rejected]; position t predicts token t + 1."""
        args, first = self.args, not self._head_checked
        if not args.dpop_shared_prefix:  # the shared forward builds its own ids, mask and positions
            model_kwargs.update({k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}, use_cache=False)
        if args.dpop_shared_prefix or args.dpop_chunked_logps:
            unwrapped, chunk_size = self.accelerator.unwrap_model(model), args.dpop_logps_chunk_size
            if first:
                self._check_model(unwrapped, inputs)
            if args.dpop_shared_prefix:
                out = shared_prefix_logps(model, unwrapped, inputs, chunk_size, with_stats, check=first, **model_kwargs)
            else:
                outputs, hidden = last_hidden_states(model, model_kwargs)
                head = unwrapped.get_output_embeddings()
                if first:
                    check_head(head, hidden, outputs.logits)
                ids, completion = inputs["input_ids"], inputs["completion_mask"]
                out = (outputs, *completion_logps(head, hidden, ids, completion, chunk_size, with_stats))
            if first:
                self._head_checked = True
                shared = "prefix-shared forward, " if args.dpop_shared_prefix else ""
                LOG.info(f"DPOP: {shared}chunked log-probs, {chunk_size} completion tokens per chunk.")
            return out
        input_ids, completion_mask = inputs["input_ids"], inputs["completion_mask"]
        outputs = model(**model_kwargs)
        logits, labels, mask = outputs.logits[:, :-1], input_ids[:, 1:], completion_mask[:, 1:]
        logps = trl_dpo.selective_log_softmax(logits, labels).masked_fill(mask == 0, 0.0).sum(dim=1)
        if not with_stats:
            return outputs, logps, None
        with torch.no_grad():
            rows, cols = mask.nonzero(as_tuple=True)
            picked = logits.detach()[rows, cols]  # [completion tokens, V]
            correct = picked.argmax(-1) == labels[rows, cols]
            return outputs, logps, HeadStats(rows, trl_dpo.entropy_from_logits(picked), picked.mean(-1), correct)

    def _check_model(self, unwrapped, inputs) -> None:
        check_chunkable(unwrapped)
        if not self.args.dpop_shared_prefix:
            return
        check_shared_prefix(unwrapped)
        if self.aux_loss_enabled:
            raise ValueError(
                f"dpop_shared_prefix: {type(unwrapped).__name__} adds a router auxiliary loss, which the shared "
                "forward would take over its trees' tokens instead of the pairs' sequences; set "
                "dpop_shared_prefix: false."
            )
        extra = set(inputs) - _NON_MODEL_KEYS - {"input_ids", "attention_mask"}
        if extra:
            raise ValueError(f"dpop_shared_prefix: batches with {sorted(extra)} are not supported; set it to false.")

    def get_train_dataloader(self):
        """With dpop_group_pairs, micro-batches of whole groups of pairs with one prompt and chosen answer."""
        if not self.args.dpop_group_pairs:
            return super().get_train_dataloader()
        from accelerate.data_loader import prepare_data_loader
        from torch.utils.data import DataLoader

        dataset = self._remove_unused_columns(self.train_dataset, description="training")
        # Python's hash of a tuple of ints is the same in every process: one group order on every rank.
        keys = [
            hash((tuple(prompt), tuple(chosen)))
            for batch in dataset.select_columns(["prompt_ids", "chosen_ids"]).iter(batch_size=1024)
            for prompt, chosen in zip(batch["prompt_ids"], batch["chosen_ids"])
        ]
        state = self.accelerator.state
        sampler = GroupedBatchSampler(
            keys, self._train_batch_size, self.args.seed, num_replicas=state.num_processes, rank=state.process_index
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        # Each rank takes its own micro-batches from the sampler: accelerate must not split them again.
        return prepare_data_loader(
            loader, self.accelerator.device, num_processes=1, process_index=0, put_on_device=True
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        extra = {"output_router_logits": True} if self.aux_loss_enabled else {}
        outputs, logps, stats = self._sequence_logps(model, inputs, with_stats=True, **extra)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        losses, *rewards_and_metrics = self._loss(self, model, inputs, chosen_logps, rejected_logps)
        loss = losses.mean()
        if self.args.dpop_group_pairs and self.model.training:
            # A micro-batch of whole groups holds more or fewer pairs than micro_batch_size: every pair weighs
            # 1 / micro_batch_size, as a pair of a full micro-batch does without grouping.
            loss = loss * len(losses) / self.args.per_device_train_batch_size
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        with torch.no_grad():
            mode = "train" if self.model.training else "eval"
            self._log_metrics(mode, inputs, stats, chosen_logps.detach(), rejected_logps.detach(), *rewards_and_metrics)
        return (loss, outputs) if return_outputs else loss

    def compute_ref_log_probs(self, model, inputs):
        """The reference pass (live, and in the precompute pass): ``model`` with a PEFT adapter disabled."""
        with (
            torch.no_grad(),
            trl_dpo.disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
        ):
            if self.ref_model is None and trl_dpo.is_peft_model(self.model):
                unwrapped = self.accelerator.unwrap_model(self.model)
                with trl_dpo.use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                    return self._sequence_logps(model, inputs)[1].chunk(2, dim=0)
            return self._sequence_logps(model, inputs)[1].chunk(2, dim=0)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        """TRL 1.9's precompute pass (a private method, pinned version) behind the verified on-disk cache of
        :mod:`axolotl_dpop.ref_cache` instead of TRL's own (which cannot tell ZeRO-3 models apart)."""
        from datasets import Dataset, IterableDataset, concatenate_datasets

        if isinstance(dataset, IterableDataset) or not self.args.dpop_ref_logps_cache_dir:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        path, key = ref_cache.cache_file(self.args.dpop_ref_logps_cache_dir, self._reference_cache_components(dataset))
        cached = [ref_cache.load(path, len(dataset), key) if self.accelerator.is_main_process else None]
        trl_dpo.broadcast_object_list(cached, from_process=0)  # every rank takes the same branch
        if cached[0] is not None:
            LOG.info(f"DPOP: reference log-probs of the {len(dataset)} {name} pairs read from the cache {path}.")
            chosen, rejected = cached[0]
        else:
            chosen, rejected = self._run_reference_pass(dataset, name, batch_size)
            ref_cache.check_finite(chosen, rejected, name)
            if self.accelerator.is_main_process:
                ref_cache.save(path, chosen, rejected, key)
                LOG.info(f"DPOP: reference log-probs of the {name} pairs cached in {path}.")
            self.accelerator.wait_for_everyone()
        columns = Dataset.from_dict({"ref_chosen_logps": chosen.tolist(), "ref_rejected_logps": rejected.tolist()})
        return concatenate_datasets([dataset, columns], axis=1)

    def _run_reference_pass(self, dataset, name, batch_size):
        """The reference forward over ``dataset`` in order, as TRL 1.9's precompute pass runs it."""
        from torch.utils.data import DataLoader

        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=self.data_collator,
            shuffle=False,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
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
        for batch in trl_dpo.tqdm(self.accelerator.prepare(loader), desc=f"Computing reference log probs for {name}"):
            batch_chosen, batch_rejected = self.accelerator.gather_for_metrics(self.compute_ref_log_probs(model, batch))
            chosen.append(batch_chosen.float().cpu())
            rejected.append(batch_rejected.float().cpu())
        return torch.cat(chosen), torch.cat(rejected)

    def _reference_cache_components(self, dataset) -> dict:
        unwrapped = self.accelerator.unwrap_model(self.ref_model or self.model)
        if self._reference_digest is None:
            adapters = tuple(getattr(unwrapped, "peft_config", {}) or ())
            tensors = ref_cache.reference_tensors(unwrapped, adapters, keep_adapter="ref")
            state = self.accelerator.state
            gather = torch.distributed.all_gather_object if state.num_processes > 1 else None
            self._reference_digest = ref_cache.weights_digest(tensors, state.process_index, state.num_processes, gather)
        base = unwrapped.get_base_model() if trl_dpo.is_peft_model(unwrapped) else unwrapped
        collator = self.data_collator
        settings = ("max_length", "truncation_mode", "pad_to_multiple_of", "pad_token_id")
        collation = {"collator": type(collator).__name__, **{k: getattr(collator, k, None) for k in settings}}
        collation.update({k: getattr(self.args, k, None) for k in ("padding_free", "disable_dropout")})
        return {
            "reference": {"weights": self._reference_digest, **ref_cache.model_settings(base)},
            "data": ref_cache.dataset_digest(dataset),
            "collation": collation,
        }

    def _log_metrics(self, mode, inputs, stats, chosen_logps, rejected_logps, chosen_rewards, rejected_rewards, extra):
        """TRL's usual DPO metrics (same names, same averaging across ranks) plus the loss's own ones."""
        gather, metrics = self.accelerator.gather_for_metrics, self._metrics[mode]
        chosen = stats.row < len(inputs["input_ids"]) // 2

        def token_mean(values, select):
            total, count = gather(values[select].sum()).sum(), gather(select.sum()).sum()
            return (total / count).item() if count > 0 else 0.0

        metrics["entropy"].append(token_mean(stats.entropy, torch.ones_like(chosen)))
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item()
        metrics["num_tokens"] = [self._total_train_tokens]
        metrics["logits/chosen"].append(token_mean(stats.logit_mean, chosen))
        metrics["logits/rejected"].append(token_mean(stats.logit_mean, ~chosen))
        metrics["mean_token_accuracy"].append(token_mean(stats.correct.float(), chosen))
        per_pair = {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": chosen_logps,
            "logps/rejected": rejected_logps,
            **extra,
        }
        # Means over every rank's pairs from gathered sums: grouped micro-batches differ in size between ranks.
        sums = torch.stack([v.float().sum() for v in per_pair.values()] + [chosen_logps.new_tensor(len(chosen_logps))])
        sums = self.accelerator.gather(sums).view(-1, len(sums)).sum(0)
        for name, total in zip(per_pair, sums[:-1]):
            metrics[name].append((total / sums[-1]).item())


class SLiCTrainer(DPOPTrainer):
    """The Smaug paper's SLiC (``loss.slic_loss``): no reference model is kept and no reference forward runs."""

    tag_names = ["axolotl", "dpo", "slic"]
    loss_name = "slic"
    _loss = staticmethod(_slic)

    def __init__(self, *args, **kwargs):
        if "ref_model" in kwargs:
            kwargs["ref_model"] = None
        elif len(args) > 1:
            args = (args[0], None, *args[2:])
        # TRL loads a second copy of the policy from its path when it gets no `ref_model` (a full fine-tune without
        # precomputed log-probs): that load answers None while the trainer is built.
        with mock.patch.object(trl_dpo, "create_model_from_path", return_value=None):
            super().__init__(*args, **kwargs)
        if self.ref_model is not None or self.args.sync_ref_model:
            raise ValueError("rl: slic uses no reference model; remove ref_model / sync_ref_model.")

    def compute_ref_log_probs(self, model, inputs):
        raise RuntimeError("rl: slic has no reference model; nothing may ask for reference log-probs.")
