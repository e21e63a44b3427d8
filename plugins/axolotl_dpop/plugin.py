"""DPOPPlugin: adds `rl: dpop` (and the Smaug paper's `rl: slic`) to axolotl.

axolotl's `rl:` is a closed enum, so `register` (which sees the raw YAML before validation) checks the plugin's
options (`validate_plugin_config`, the one place they are checked) and turns `rl: dpop` into `rl: dpo` +
`dpop: true` with `trainer_cls` DPOPTrainer (`rl: slic`: `slic: true`, SLiCTrainer). From there axolotl's own
DPO path runs — datasets and `type:`s, LoRA/QLoRA, precomputed reference log-probs, DeepSpeed — and only the
loss differs. Without `rl: dpop` / `rl: slic` the plugin changes no training behaviour; it only writes
`smaug_provenance.json` next to the trained weights.

With `rl: dpop`, `dpop_chunked_logps: true` computes the log-probs with a token-chunked head
(`axolotl_dpop.chunked_logps`), and `precompute_ref_log_probs: true` on a full fine-tune keeps no reference
model at all (axolotl 0.19 would load one anyway) and caches the reference log-probs on disk
(`axolotl_dpop.ref_cache`). `rl: slic` has no reference model at all.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from axolotl.integrations.base import BasePlugin
from axolotl.utils.logging import get_logger

from axolotl_dpop import data_checks
from axolotl_dpop.args import DEFAULT_DPOP_LAMBDA, DEFAULT_SLIC_LAMBDA
from axolotl_dpop.chunked_logps import DEFAULT_CHUNK_SIZE

LOG = get_logger(__name__)
TRAINER_CLS = "axolotl_dpop.trainer.DPOPTrainer"
# The RL types this plugin adds: the trainer each one runs, its lambda option and that option's default.
PLUGIN_RL = {
    "dpop": {
        "trainer_cls": TRAINER_CLS,
        "lambda": "dpop_lambda",
        "default": DEFAULT_DPOP_LAMBDA,
        "lambda_hint": "the paper uses 50",
    },
    "slic": {
        "trainer_cls": "axolotl_dpop.trainer.SLiCTrainer",
        "lambda": "slic_lambda",
        "default": DEFAULT_SLIC_LAMBDA,
        "lambda_hint": "default 0.1",
    },
}
# DPO options that change the loss DPOP/SLiC replace; a value here is a config mistake, not a preference.
_CONFLICTING_OPTIONS = ("dpo_use_weighting", "dpo_use_liger_kernel", "dpo_label_smoothing", "dpo_ld_alpha")
# SLiC has no reference model: options that configure one are mistakes too.
_REFERENCE_OPTIONS = ("precompute_ref_log_probs", "rl_adapter_ref_model")
_DPOP_ONLY_OPTIONS = ("dpop_chunked_logps", "dpop_logps_chunk_size", "dpop_ref_logps_cache_dir")


class DPOPPlugin(BasePlugin):
    def get_input_args(self) -> str:
        return "axolotl_dpop.args.DPOPArgs"

    def get_training_args_mixin(self) -> str:
        return "axolotl_dpop.args.DPOPTrainingArgs"

    def get_training_args(self, cfg) -> dict | None:
        if not cfg.get("dpop"):
            return None
        from axolotl.common.const import DEFAULT_DATASET_PREPARED_PATH

        cache_dir = cfg.get("dpop_ref_logps_cache_dir") or str(
            Path(cfg.get("dataset_prepared_path") or DEFAULT_DATASET_PREPARED_PATH) / "dpop_ref_logps"
        )
        return {
            "dpop_chunked_logps": bool(cfg.get("dpop_chunked_logps")),
            "dpop_logps_chunk_size": cfg.get("dpop_logps_chunk_size") or DEFAULT_CHUNK_SIZE,
            "dpop_ref_logps_cache_dir": cache_dir if cfg.get("precompute_ref_log_probs") else None,
        }

    def register(self, cfg: dict):
        validate_plugin_config(cfg)
        rl = cfg.get("rl")
        if rl not in PLUGIN_RL:
            return
        spec = PLUGIN_RL[rl]
        cfg["rl"] = "dpo"
        cfg[rl] = True
        cfg["trainer_cls"] = spec["trainer_cls"]
        if cfg.get(spec["lambda"]) is None:
            cfg[spec["lambda"]] = spec["default"]

    def pre_model_load(self, cfg):
        if _plugin_rl(cfg) is None:
            return
        if cfg.get("seed") is not None:
            # axolotl 0.19 seeds only when the Trainer is built, after a LoRA adapter's A matrices were drawn
            # at random: two runs of one config then train different adapters. Seed before the model loads.
            from transformers import set_seed

            set_seed(int(cfg.seed))
        if _keeps_no_reference_model(cfg):
            _skip_axolotl_reference_model()

    def load_datasets(self, cfg, preprocess: bool = False):
        """Check every row before any model is loaded, then load as axolotl would and drop identical pairs."""
        _place_multiprocess_cpu_models_on_cpu(cfg)
        if not _plugin_rl(cfg):
            return None
        from axolotl.common.datasets import TrainDatasetMeta, load_preference_datasets

        data_checks.raise_for_problems(_check_configured_datasets(cfg))
        meta = load_preference_datasets(cfg=cfg)
        train = _drop_identical(meta.train_dataset, "train")
        evaluation = _drop_identical(meta.eval_dataset, "eval") if meta.eval_dataset is not None else None
        total_steps = meta.total_num_steps
        if total_steps is not None and len(train) != len(meta.train_dataset):
            total_steps = int(math.ceil(len(train) * cfg.num_epochs / cfg.batch_size))
        return TrainDatasetMeta(train_dataset=train, eval_dataset=evaluation, total_num_steps=total_steps)

    def post_trainer_create(self, cfg, trainer):
        rl = _plugin_rl(cfg)
        if rl is None:
            return
        from axolotl_dpop.trainer import DPOPTrainer

        if not isinstance(trainer, DPOPTrainer) or trainer.loss_name != rl:
            raise TypeError(
                f"rl: {rl} expected {PLUGIN_RL[rl]['trainer_cls']}, axolotl built {type(trainer).__name__}."
            )
        lam = PLUGIN_RL[rl]["lambda"]
        setattr(trainer, lam, float(cfg[lam]))
        reference = "" if rl == "dpop" else f"; reference model: {trainer.ref_model}"
        LOG.info(f"{rl.upper()}: beta={trainer.beta} lambda={getattr(trainer, lam)}{reference}")

    def post_train(self, cfg, model):
        # Called by axolotl both after trainer.train() and after the final save; writing twice is harmless.
        if int(os.environ.get("RANK", "0")) == 0 and cfg.get("output_dir"):
            from axolotl_dpop.provenance import training_record, write_provenance

            write_provenance(cfg.get("output_dir"), training_record(cfg))


def _plugin_rl(cfg) -> str | None:
    """`dpop` / `slic` when the (registered) config runs one of the plugin's RL types, else None."""
    return next((rl for rl in PLUGIN_RL if cfg.get(rl)), None)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_plugin_config(cfg: dict) -> None:
    """Every check of the plugin's options, on the raw YAML, before anything loads: one ValueError naming the
    file and the field. The only place they are checked (args.DPOPArgs only declares them)."""
    where = cfg.get("axolotl_config_path") or "the axolotl config"
    rl = cfg.get("rl")
    if rl not in PLUGIN_RL:
        for own_rl, spec in PLUGIN_RL.items():
            if cfg.get(spec["lambda"]) is not None:
                raise ValueError(
                    f"{where}: {spec['lambda']} is set but rl is not {own_rl}: set `rl: {own_rl}`, "
                    f"or remove {spec['lambda']}."
                )
        stray = [key for key in _DPOP_ONLY_OPTIONS if cfg.get(key) is not None]
        if stray:
            raise ValueError(f"{where}: {stray} only apply to rl: dpop; set `rl: dpop` or remove them.")
        return
    spec = PLUGIN_RL[rl]
    lam_name = spec["lambda"]
    lam = cfg.get(lam_name)
    if lam is not None and not (_is_number(lam) and lam >= 0):
        raise ValueError(f"{where}: {lam_name} must be a number >= 0 ({spec['lambda_hint']}), got {lam!r}.")
    others = [
        PLUGIN_RL[other]["lambda"]
        for other in PLUGIN_RL
        if other != rl and cfg.get(PLUGIN_RL[other]["lambda"]) is not None
    ]
    if rl != "dpop":
        others += [key for key in _DPOP_ONLY_OPTIONS if cfg.get(key) is not None]
    if others:
        raise ValueError(f"{where}: {others[0]} is not an option of rl: {rl}; remove it (rl: {rl} uses {lam_name}).")
    beta = cfg.get("rl_beta")
    if rl == "slic" and beta is None:
        raise ValueError(f"{where}: rl: slic needs rl_beta, the hinge margin in nats (> 0).")
    if beta is not None and not (_is_number(beta) and beta > 0):
        raise ValueError(f"{where}: rl_beta must be a number > 0, got {beta!r}.")
    loss_type = cfg.get("dpo_loss_type")
    if loss_type not in (None, "sigmoid", ["sigmoid"]):
        raise ValueError(
            f"{where}: rl: {rl} defines its own loss; remove dpo_loss_type ({loss_type!r}) or use "
            "rl: dpo for TRL's losses (TRL's hinge: rl: dpo + dpo_loss_type: [hinge])."
        )
    conflicting = _CONFLICTING_OPTIONS + (_REFERENCE_OPTIONS if rl == "slic" else ())
    conflicts = [key for key in conflicting if cfg.get(key)]
    if conflicts:
        why = " (it has no reference model)" if set(conflicts) & set(_REFERENCE_OPTIONS) else ""
        raise ValueError(f"{where}: rl: {rl} cannot be combined with {conflicts}{why}; remove them.")
    if cfg.get("trainer_cls") not in (None, spec["trainer_cls"]):
        raise ValueError(
            f"{where}: rl: {rl} sets trainer_cls itself; remove trainer_cls "
            f"({cfg.get('trainer_cls')!r}) or subclass {spec['trainer_cls']}."
        )
    if rl == "dpop":
        _check_chunked_logps_options(cfg, where)


def _check_chunked_logps_options(cfg: dict, where: str) -> None:
    chunked = cfg.get("dpop_chunked_logps")
    if chunked is not None and not isinstance(chunked, bool):
        raise ValueError(f"{where}: dpop_chunked_logps must be true or false, got {chunked!r}.")
    size = cfg.get("dpop_logps_chunk_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(
                f"{where}: dpop_logps_chunk_size must be a whole number of tokens >= 1 (e.g. 1024), got {size!r}."
            )
        if not chunked:
            raise ValueError(f"{where}: dpop_logps_chunk_size only applies with dpop_chunked_logps: true.")
    if chunked and (cfg.get("fsdp") or cfg.get("fsdp_config")):
        raise ValueError(
            f"{where}: dpop_chunked_logps reads the output projection's weight directly, which "
            "FSDP shards; use DeepSpeed (ZeRO-3 is supported) or set dpop_chunked_logps: false."
        )
    cache_dir = cfg.get("dpop_ref_logps_cache_dir")
    if cache_dir is not None:
        if not isinstance(cache_dir, str) or not cache_dir.strip():
            raise ValueError(f"{where}: dpop_ref_logps_cache_dir must be a folder path, got {cache_dir!r}.")
        if not cfg.get("precompute_ref_log_probs"):
            raise ValueError(f"{where}: dpop_ref_logps_cache_dir only applies with precompute_ref_log_probs: true.")


def _keeps_no_reference_model(cfg) -> bool:
    """SLiC has none; a full fine-tune whose reference log-probs are precomputed (by the initial policy, which
    at step 0 is the reference) needs none. A LoRA run's reference is the adapter-disabled model anyway."""
    return bool(cfg.get("slic") or (cfg.get("dpop") and cfg.get("precompute_ref_log_probs") and not cfg.get("adapter")))


def _skip_axolotl_reference_model() -> None:
    """axolotl 0.19 loads a second copy of the model as the DPO reference (`axolotl.train.setup_reference_model`,
    called after the policy loads) even where none is used. Answer None there for configs that keep no reference
    model (`_keeps_no_reference_model`); every other config gets axolotl's own behaviour."""
    import axolotl.train as axolotl_train

    original = getattr(axolotl_train, "setup_reference_model", None)
    if original is None:
        raise RuntimeError(
            "axolotl_dpop: axolotl.train.setup_reference_model is gone (axolotl changed); "
            "update DPOPPlugin.pre_model_load."
        )
    if getattr(original, "dpop_skips_reference", False):
        return

    def setup_reference_model(cfg, *args, **kwargs):
        if not _keeps_no_reference_model(cfg):
            return original(cfg, *args, **kwargs)
        LOG.info(
            "no reference model is loaded: "
            + (
                "rl: slic has none"
                if cfg.get("slic")
                else "precompute_ref_log_probs on a full fine-tune takes the reference log-probs from the initial "
                "policy before training"
            )
        )
        return None

    setup_reference_model.dpop_skips_reference = True
    axolotl_train.setup_reference_model = setup_reference_model


def _place_multiprocess_cpu_models_on_cpu(cfg) -> None:
    """axolotl 0.19 maps a multi-process run's model to device index LOCAL_RANK, which only exists on GPUs.
    On a machine without CUDA (a gloo launch, as in our tests) put the models on the CPU instead. This is the
    last hook after axolotl sets device_map and before it loads the model; GPU runs are untouched."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        cfg.device_map = "cpu"


def _check_configured_datasets(cfg) -> list[data_checks.DatasetReport]:
    from axolotl.prompt_strategies.dpo import load as load_dpo
    from axolotl.utils.data.shared import datasets_with_name_generator, load_dataset_with_config
    from datasets import DatasetDict

    reports, tokenizer = [], None
    for key in ("datasets", "test_datasets"):
        for index, ds_cfg in enumerate(cfg.get(key) or []):
            type_name = ds_cfg.get("type")
            if isinstance(type_name, dict):
                type_name = "user_defined.default"
            transform = load_dpo(type_name, cfg, dataset_idx=index) if type_name else (lambda row: row)
            if transform is None:
                raise data_checks.PreferenceDataError(
                    f"{key}[{index}] ({ds_cfg.get('path')}): unknown DPO dataset type {type_name!r}."
                )
            if isinstance(transform, tuple):
                transform = transform[0]
            if tokenizer is None and "tokenizer" in _params(transform):
                from axolotl.loaders import load_tokenizer

                tokenizer = load_tokenizer(cfg)
            for expanded in datasets_with_name_generator([ds_cfg]):
                dataset = load_dataset_with_config(expanded, cfg.hf_use_auth_token, streaming=False)
                if isinstance(dataset, DatasetDict):
                    dataset = dataset[expanded.get("split") or "train"]
                source = f"{key}[{index}] {expanded.get('path')}"
                if expanded.get("data_files"):
                    source += f" (data_files={expanded.get('data_files')})"
                report = data_checks.check_rows(dataset, transform, source, str(type_name), tokenizer)
                if report.identical:
                    LOG.warning(
                        f"{source}: {report.identical} of {report.rows} rows have identical "
                        "chosen and rejected texts; they will be dropped."
                    )
                reports.append(report)
    return reports


def _params(fn) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def _drop_identical(dataset, split: str):
    before = len(dataset)
    kept = dataset.filter(lambda row: row["chosen"] != row["rejected"], desc="DPOP: dropping identical pairs")
    if len(kept) != before:
        LOG.warning(
            f"DPOP: dropped {before - len(kept)} of {before} {split} pairs whose chosen and "
            "rejected texts are identical (no preference signal)."
        )
    return kept
