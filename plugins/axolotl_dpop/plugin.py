"""DPOPPlugin: adds `rl: dpop` (and the Smaug paper's `rl: slic`) to axolotl.

axolotl's `rl:` is a closed enum, so `register` (which sees the raw YAML before validation) turns
`rl: dpop` into `rl: dpo` + `dpop: true` and points `trainer_cls` at DPOPTrainer (`rl: slic`: `slic: true`,
SLiCTrainer). From there axolotl's own DPO path runs — datasets and `type:`s, LoRA/QLoRA, precomputed
reference log-probs, DeepSpeed — and only the loss differs (SLiC also loads no reference model). Without
`rl: dpop` / `rl: slic` the plugin changes no training behaviour; it only writes `smaug_provenance.json`
next to the trained weights.
"""

from __future__ import annotations

import math
import os

from axolotl.integrations.base import BasePlugin
from axolotl.utils.logging import get_logger

from axolotl_dpop import data_checks

LOG = get_logger(__name__)
TRAINER_CLS = "axolotl_dpop.trainer.DPOPTrainer"
# The RL types this plugin adds: the trainer each one runs and its lambda option (name, what the paper uses).
PLUGIN_RL = {
    "dpop": {"trainer_cls": TRAINER_CLS, "lambda": "dpop_lambda", "lambda_hint": "the paper uses 50"},
    "slic": {"trainer_cls": "axolotl_dpop.trainer.SLiCTrainer", "lambda": "slic_lambda",
             "lambda_hint": "default 0.1"},
}
# DPO options that change the loss DPOP/SLiC replace; a value here is a config mistake, not a preference.
_CONFLICTING_OPTIONS = ("dpo_use_weighting", "dpo_use_liger_kernel", "dpo_label_smoothing", "dpo_ld_alpha")
# SLiC has no reference model: options that configure one are mistakes too.
_REFERENCE_OPTIONS = ("precompute_ref_log_probs", "rl_adapter_ref_model")


class DPOPPlugin(BasePlugin):
    def get_input_args(self) -> str:
        return "axolotl_dpop.args.DPOPArgs"

    def register(self, cfg: dict):
        rl = cfg.get("rl")
        if rl not in PLUGIN_RL:
            return
        validate_plugin_rl(cfg, rl)
        cfg["rl"] = "dpo"
        cfg[rl] = True
        cfg["trainer_cls"] = PLUGIN_RL[rl]["trainer_cls"]

    def pre_model_load(self, cfg):
        if cfg.get("slic"):
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
            raise TypeError(f"rl: {rl} expected {PLUGIN_RL[rl]['trainer_cls']}, axolotl built "
                            f"{type(trainer).__name__}.")
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
    """`dpop` / `slic` when the (validated) config runs one of the plugin's RL types, else None."""
    return next((rl for rl in PLUGIN_RL if cfg.get(rl)), None)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_plugin_rl(cfg: dict, rl: str) -> None:
    """Every check of an `rl: dpop` / `rl: slic` config, on the raw YAML, before anything loads: one clear
    ValueError naming the file and the field."""
    where = cfg.get("axolotl_config_path") or "the axolotl config"
    spec = PLUGIN_RL[rl]
    lam_name = spec["lambda"]
    lam = cfg.get(lam_name)
    if lam is not None and not (_is_number(lam) and lam >= 0):
        raise ValueError(f"{where}: {lam_name} must be a number >= 0 ({spec['lambda_hint']}), got {lam!r}.")
    others = [PLUGIN_RL[other]["lambda"] for other in PLUGIN_RL
              if other != rl and cfg.get(PLUGIN_RL[other]["lambda"]) is not None]
    if others:
        raise ValueError(f"{where}: {others[0]} is not an option of rl: {rl}; remove it (rl: {rl} uses {lam_name}).")
    beta = cfg.get("rl_beta")
    if rl == "slic" and beta is None:
        raise ValueError(f"{where}: rl: slic needs rl_beta, the hinge margin in nats (> 0).")
    if beta is not None and not (_is_number(beta) and beta > 0):
        raise ValueError(f"{where}: rl_beta must be a number > 0, got {beta!r}.")
    loss_type = cfg.get("dpo_loss_type")
    if loss_type not in (None, "sigmoid", ["sigmoid"]):
        raise ValueError(f"{where}: rl: {rl} defines its own loss; remove dpo_loss_type ({loss_type!r}) or use "
                         "rl: dpo for TRL's losses (TRL's hinge: rl: dpo + dpo_loss_type: [hinge]).")
    conflicting = _CONFLICTING_OPTIONS + (_REFERENCE_OPTIONS if rl == "slic" else ())
    conflicts = [key for key in conflicting if cfg.get(key)]
    if conflicts:
        why = " (it has no reference model)" if set(conflicts) & set(_REFERENCE_OPTIONS) else ""
        raise ValueError(f"{where}: rl: {rl} cannot be combined with {conflicts}{why}; remove them.")
    if cfg.get("trainer_cls") not in (None, spec["trainer_cls"]):
        raise ValueError(f"{where}: rl: {rl} sets trainer_cls itself; remove trainer_cls "
                         f"({cfg.get('trainer_cls')!r}) or subclass {spec['trainer_cls']}.")


def _skip_axolotl_reference_model() -> None:
    """axolotl 0.19 loads a second copy of the model as the DPO reference (`axolotl.train.setup_reference_model`,
    called after the policy loads). SLiC has none, so the plugin answers None there for `slic` configs. If axolotl
    moves that function, the reference is loaded as before (memory only) and SLiCTrainer still drops it."""
    import axolotl.train as axolotl_train

    original = getattr(axolotl_train, "setup_reference_model", None)
    if original is None or getattr(original, "skips_slic_reference", False):
        if original is None:
            LOG.warning("SLiC: axolotl.train.setup_reference_model not found; a reference model may be loaded.")
        return

    def setup_reference_model(cfg, *args, **kwargs):
        return None if cfg.get("slic") else original(cfg, *args, **kwargs)

    setup_reference_model.skips_slic_reference = True
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
                    f"{key}[{index}] ({ds_cfg.get('path')}): unknown DPO dataset type {type_name!r}.")
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
                    LOG.warning(f"{source}: {report.identical} of {report.rows} rows have identical "
                                "chosen and rejected texts; they will be dropped.")
                reports.append(report)
    return reports


def _params(fn) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def _drop_identical(dataset, split: str):
    before = len(dataset)
    kept = dataset.filter(lambda row: row["chosen"] != row["rejected"], desc="DPOP: dropping identical pairs")
    if len(kept) != before:
        LOG.warning(f"DPOP: dropped {before - len(kept)} of {before} {split} pairs whose chosen and "
                    "rejected texts are identical (no preference signal).")
    return kept
