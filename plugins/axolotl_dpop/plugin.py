"""DPOPPlugin: `rl: dpop` and the Smaug paper's `rl: slic` on axolotl's DPO path, and checked preference data
for every run that lists it."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

from axolotl.integrations.base import BasePlugin
from axolotl.utils.logging import get_logger
from axolotl.utils.schemas.enums import LEGACY_ATTN_FLAG_TO_IMPL
from pydantic import ValidationError

from axolotl_dpop import data_checks
from axolotl_dpop.args import DEFAULT_DPOP_LAMBDA, DEFAULT_SLIC_LAMBDA, DPOPArgs
from axolotl_dpop.chunked_logps import DEFAULT_CHUNK_SIZE
from axolotl_dpop.shared_prefix import check_attention

LOG = get_logger(__name__)
# rl -> (its trainer, its lambda option, that option's default)
PLUGIN_RL = {
    "dpop": ("axolotl_dpop.trainer.DPOPTrainer", "dpop_lambda", DEFAULT_DPOP_LAMBDA),
    "slic": ("axolotl_dpop.trainer.SLiCTrainer", "slic_lambda", DEFAULT_SLIC_LAMBDA),
}
# The rl types whose rows axolotl reads as prompt/chosen/rejected pairs (`axolotl.prompt_strategies.dpo`), after
# `register` turned dpop/slic into dpo: every arm of a comparison gets the same checked rows.
PAIRED_RL = {"dpo", "ipo", "simpo"}
# The columns TRL 1.9's DPO reads (its `_signature_columns` for images). Another column can mislead it: it decides
# whether rows are conversational from one arbitrary key, so a leftover `messages` list (UltraFeedback) can make
# it skip the EOS of every completion under some hash seeds.
TRL_COLUMNS = ("prompt", "chosen", "rejected", "image", "images", "tools", "chat_template_kwargs")
# Options of both rl: dpop and rl: slic (how the log-probs are computed), and the options each one needs.
_FORWARD_OPTIONS = ("dpop_chunked_logps", "dpop_logps_chunk_size", "dpop_shared_prefix", "dpop_group_pairs")
_NEEDS = {
    "dpop_logps_chunk_size": ("dpop_chunked_logps", "dpop_shared_prefix"),
    "dpop_ref_logps_cache_dir": ("precompute_ref_log_probs",),
    "dpop_group_pairs": ("dpop_shared_prefix",),
}
# DPO options that change the loss DPOP and SLiC replace, and (SLiC has no reference model) those of a reference.
_CONFLICTING = ("dpo_use_weighting", "dpo_use_liger_kernel", "dpo_label_smoothing", "dpo_ld_alpha")
_REFERENCE_OPTIONS = ("precompute_ref_log_probs", "rl_adapter_ref_model")


class DPOPPlugin(BasePlugin):
    def get_input_args(self) -> str:
        return "axolotl_dpop.args.DPOPArgs"

    def get_training_args_mixin(self) -> str:
        return "axolotl_dpop.args.DPOPTrainingArgs"

    def register(self, cfg: dict):
        validate_plugin_config(cfg)
        rl = cfg.get("rl")
        if rl in PLUGIN_RL:
            trainer_cls, lam, default = PLUGIN_RL[rl]
            cfg.update({"rl": "dpo", rl: True, "trainer_cls": trainer_cls})
            cfg[lam] = default if cfg.get(lam) is None else cfg[lam]

    def get_training_args(self, cfg) -> dict | None:
        rl = _plugin_rl(cfg)
        if rl is None:
            return None
        from axolotl.common.const import DEFAULT_DATASET_PREPARED_PATH

        lam = PLUGIN_RL[rl][1]
        prepared = Path(cfg.get("dataset_prepared_path") or DEFAULT_DATASET_PREPARED_PATH)
        return {
            lam: float(cfg[lam]),
            "dpop_chunked_logps": bool(cfg.get("dpop_chunked_logps")),
            "dpop_logps_chunk_size": cfg.get("dpop_logps_chunk_size") or DEFAULT_CHUNK_SIZE,
            "dpop_shared_prefix": bool(cfg.get("dpop_shared_prefix")),
            "dpop_group_pairs": bool(cfg.get("dpop_group_pairs")),
            "dpop_ref_logps_cache_dir": (cfg.get("dpop_ref_logps_cache_dir") or str(prepared / "dpop_ref_logps"))
            if cfg.get("precompute_ref_log_probs")
            else None,
        }

    def pre_model_load(self, cfg):
        if _plugin_rl(cfg) is None:
            return
        if cfg.get("seed") is not None:
            # axolotl 0.19 seeds only when the Trainer is built, after a LoRA adapter's A matrices were drawn
            # at random: two runs of one config then train different adapters. Seed before the model loads.
            from transformers import set_seed

            set_seed(int(cfg.seed))
        if _keeps_no_reference_model(cfg):
            # axolotl 0.19 loads a second copy of the model as the DPO reference even where none is used.
            import axolotl.train

            original = getattr(axolotl.train.setup_reference_model, "__wrapped__", axolotl.train.setup_reference_model)
            axolotl.train.setup_reference_model = functools.wraps(original)(functools.partial(_no_reference, original))

    def load_datasets(self, cfg, preprocess: bool = False):
        """Check every row before any model is loaded, then load as axolotl would and drop identical pairs."""
        _place_multiprocess_cpu_models_on_cpu(cfg)
        if str(getattr(cfg.rl, "value", cfg.rl)) not in PAIRED_RL:
            return None
        from axolotl.common.datasets import TrainDatasetMeta, load_preference_datasets

        rows = data_checks.check_configured_datasets(cfg)
        meta = load_preference_datasets(cfg=cfg)
        splits = {"train": meta.train_dataset, "eval": meta.eval_dataset}
        for split, dataset in splits.items():
            if dataset is not None:
                dataset = dataset.select_columns([c for c in dataset.column_names if c in TRL_COLUMNS])
            kept = _drop_identical(dataset, split) if dataset is not None else None
            if kept is not None and len(kept) == 0 and rows[split]:
                # TRL would stop at its first look at the empty dataset (StopIteration), after loading the model.
                raise data_checks.PreferenceDataError(
                    f"{_where(cfg)}: sequence_len: {cfg.sequence_len} drops all {rows[split]} {split} rows (axolotl "
                    "drops a pair whose prompt + answer is longer): raise sequence_len or shorten the rows."
                    if len(dataset) == 0
                    else f"{_where(cfg)}: all {len(dataset)} {split} pairs have identical chosen and rejected texts."
                )
            splits[split] = kept
        train, evaluation = splits.values()
        total_steps = meta.total_num_steps
        if total_steps is not None and len(train) != len(meta.train_dataset):
            total_steps = int(math.ceil(len(train) * cfg.num_epochs / cfg.batch_size))
        return TrainDatasetMeta(train_dataset=train, eval_dataset=evaluation, total_num_steps=total_steps)

    def post_train(self, cfg, model):
        # Called by axolotl both after trainer.train() and after the final save; writing twice is harmless.
        if int(os.environ.get("RANK", "0")) == 0 and cfg.get("output_dir"):
            from axolotl_dpop.provenance import training_record, write_provenance

            write_provenance(cfg.get("output_dir"), training_record(cfg))


def _plugin_rl(cfg) -> str | None:
    """`dpop` / `slic` when the registered config runs one of the plugin's rl types."""
    return next((rl for rl in PLUGIN_RL if cfg.get(rl)), None)


def _where(cfg) -> str:
    return cfg.get("axolotl_config_path") or "the axolotl config"


def validate_plugin_config(cfg: dict) -> None:
    """The plugin's checks, on the raw YAML before anything loads: one ValueError naming the file and field."""
    where, rl = _where(cfg), cfg.get("rl")
    try:
        DPOPArgs.model_validate({key: cfg[key] for key in DPOPArgs.model_fields if cfg.get(key) is not None})
    except ValidationError as err:
        key = err.errors()[0]["loc"][0]
        raise ValueError(
            f"{where}: {key}: {err.errors()[0]['msg']}, got {cfg[key]!r} ({DPOPArgs.model_fields[key].description})."
        ) from None
    beta = cfg.get("rl_beta")
    if rl == "slic" and beta is None:
        raise ValueError(f"{where}: rl: slic needs rl_beta, the hinge margin in nats (> 0).")
    if beta is not None and not (type(beta) in (int, float) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"{where}: rl_beta must be a number > 0 (the paper uses 0.3), got {beta!r}.")
    for key in [key for key in DPOPArgs.model_fields if key not in PLUGIN_RL and cfg.get(key) is not None]:
        # dpop_* options belong to rl: dpop, slic_* to rl: slic, the forward's options to both
        owners = tuple(PLUGIN_RL) if key in _FORWARD_OPTIONS else (key.split("_")[0],)
        if rl not in owners:
            raise ValueError(
                f"{where}: {key} is an option of rl: {owners[0]}, not of rl: {rl}; remove it or set rl: "
                f"{' or rl: '.join(owners)}."
            )
        needs = _NEEDS.get(key, ())
        if needs and not any(cfg.get(need) for need in needs):
            raise ValueError(f"{where}: {key} only applies with {' or '.join(f'{n}: true' for n in needs)}.")
    if rl not in PLUGIN_RL:
        return
    loss_type = cfg.get("dpo_loss_type")
    if loss_type not in (None, "sigmoid", ["sigmoid"]):
        raise ValueError(
            f"{where}: rl: {rl} defines its own loss; remove dpo_loss_type ({loss_type!r}) or use "
            "rl: dpo for TRL's losses (TRL's hinge: rl: dpo + dpo_loss_type: [hinge])."
        )
    conflicts = [key for key in _CONFLICTING + (_REFERENCE_OPTIONS if rl == "slic" else ()) if cfg.get(key)]
    if conflicts:
        why = " (it has no reference model)" if set(conflicts) & set(_REFERENCE_OPTIONS) else ""
        raise ValueError(f"{where}: rl: {rl} cannot be combined with {conflicts}{why}; remove them.")
    if cfg.get("trainer_cls") not in (None, PLUGIN_RL[rl][0]):
        raise ValueError(
            f"{where}: rl: {rl} sets trainer_cls itself; remove trainer_cls ({cfg.get('trainer_cls')!r}) "
            f"or subclass {PLUGIN_RL[rl][0]}."
        )
    head = next((key for key in ("dpop_shared_prefix", "dpop_chunked_logps") if cfg.get(key)), None)
    if head and (cfg.get("fsdp") or cfg.get("fsdp_config")):
        raise ValueError(
            f"{where}: {head} calls the output projection outside the model's forward, where FSDP has "
            f"resharded it; use DeepSpeed (ZeRO-3 is supported) or set {head}: false."
        )
    if cfg.get("dpop_shared_prefix"):
        # The shared forward sends only completion tokens to the head: it implies the chunked head.
        if cfg.get("dpop_chunked_logps") is False:
            raise ValueError(f"{where}: dpop_shared_prefix uses the chunked head; remove dpop_chunked_logps: false.")
        flag = next((flag for flag in LEGACY_ATTN_FLAG_TO_IMPL if cfg.get(flag)), None)
        attn = cfg.get("attn_implementation") or LEGACY_ATTN_FLAG_TO_IMPL.get(flag)
        try:
            check_attention(attn, flag)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


def _keeps_no_reference_model(cfg) -> bool:
    """SLiC has none; a full fine-tune whose reference log-probs are precomputed (by the initial policy, which
    at step 0 is the reference) needs none. A LoRA run's reference is the adapter-disabled model anyway."""
    return bool(cfg.get("slic") or (cfg.get("dpop") and cfg.get("precompute_ref_log_probs") and not cfg.get("adapter")))


def _no_reference(setup_reference_model, cfg, *args, **kwargs):
    """axolotl's `setup_reference_model`, answering None for configs that keep no reference model."""
    if not _keeps_no_reference_model(cfg):
        return setup_reference_model(cfg, *args, **kwargs)
    why = "rl: slic has none" if cfg.get("slic") else "the initial policy gives the precomputed log-probs"
    LOG.info(f"no reference model is loaded: {why}")


def _place_multiprocess_cpu_models_on_cpu(cfg) -> None:
    """axolotl 0.19 maps a multi-process run's model to device index LOCAL_RANK, which only exists on GPUs; on a
    machine without CUDA (a gloo launch) keep the models on the CPU. The last hook before the model loads."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        cfg.device_map = "cpu"


def _drop_identical(dataset, split: str):
    kept = dataset.filter(lambda row: row["chosen"] != row["rejected"], desc="dropping identical pairs")
    if len(kept) != len(dataset):
        LOG.warning(
            f"dropped {len(dataset) - len(kept)} of {len(dataset)} {split} pairs whose chosen and rejected texts "
            "are identical (no preference signal)."
        )
    return kept
