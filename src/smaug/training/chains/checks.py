"""Every stage checked before the first one trains: values axolotl accepts but that would reverse or break
training (β <= 0, NaN/inf, non-positive steps or batch sizes…), then axolotl's own validation (with the
plugin's)."""

from __future__ import annotations

import math
from typing import Any

from smaug.common.errors import UserError
from smaug.training.chains.plan import Chain, ChainStage, Launch
from smaug.training.recipes import is_preference

# key -> (lowest, lowest allowed?, highest, highest allowed?) for numbers a recipe may set
_RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "max_steps": (1, True, None, False),
    "micro_batch_size": (1, True, None, False),
    "eval_batch_size": (1, True, None, False),
    "gradient_accumulation_steps": (1, True, None, False),
    "sequence_len": (1, True, None, False),
    "save_steps": (0, False, None, False),
    "logging_steps": (0, False, None, False),
    "eval_steps": (0, False, None, False),
    "save_total_limit": (1, True, None, False),
    "num_epochs": (0, False, None, False),
    "learning_rate": (0, False, None, False),
    "warmup_steps": (0, True, None, False),
    "warmup_ratio": (0, True, 1, True),
    "weight_decay": (0, True, None, False),
    "max_grad_norm": (0, True, None, False),
    "adam_beta1": (0, True, 1, False),
    "adam_beta2": (0, True, 1, False),
    "adam_epsilon": (0, False, None, False),
    "lora_r": (1, True, None, False),
    "lora_alpha": (0, False, None, False),
    "lora_dropout": (0, True, 1, False),
    "val_set_size": (0, True, None, False),
}  # dpop_lambda is the DPOP plugin's to check (axolotl_dpop.args), through validate_stages
_WHOLE = {
    "max_steps",
    "micro_batch_size",
    "eval_batch_size",
    "gradient_accumulation_steps",
    "sequence_len",
    "save_total_limit",
    "warmup_steps",
    "lora_r",
}


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _non_finite(value: Any, path: str = "") -> tuple[str, Any] | None:
    """The first NaN/inf float anywhere in a (nested) config, as (key path, value)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if path and not str(key).startswith("[") else f"{path}{key}")
        if found:
            return found
    return None


def check_settings(chain: Chain) -> None:
    """Our own checks, on every stage before anything runs: the values axolotl accepts that reverse or break
    training. One error naming the recipe, the key and what to do."""
    for stage in chain.stages:
        recipe, where = stage.recipe, stage.where(chain.name)
        bad = _non_finite(recipe)
        if bad:
            raise UserError(f"{where}: `{bad[0]}` is {bad[1]}; training settings must be finite numbers")
        for key, (low, low_ok, high, high_ok) in _RANGES.items():
            if key not in recipe or recipe[key] is None or (key == "max_steps" and recipe[key] == -1):
                continue  # max_steps: -1 is transformers' "unset" (train by num_epochs)
            value, number = recipe[key], _as_number(recipe[key])
            if number is None or (key in _WHOLE and not float(number).is_integer()):
                kind = "a whole number" if key in _WHOLE else "a number"
                raise UserError(f"{where}: `{key}: {value!r}` is not {kind}")
            if not math.isfinite(number):
                raise UserError(f"{where}: `{key}` is {value!r}; training settings must be finite numbers")
            too_low = low is not None and (number < low or (number == low and not low_ok))
            too_high = high is not None and (number > high or (number == high and not high_ok))
            if too_low or too_high:
                span = (
                    (f"{'>=' if low_ok else '>'} {low:g}" if low is not None else "")
                    + (" and " if low is not None and high is not None else "")
                    + (f"{'<=' if high_ok else '<'} {high:g}" if high is not None else "")
                )
                raise UserError(f"{where}: `{key}: {value!r}` is out of range; it must be {span}")
        if is_preference(recipe):
            beta = _as_number(recipe.get("rl_beta"))
            if "rl_beta" in recipe and (beta is None or not math.isfinite(beta) or beta <= 0):
                raise UserError(
                    f"{where}: `rl_beta: {recipe.get('rl_beta')!r}` must be a number > 0 (the paper "
                    "uses 0.3); beta <= 0 reverses or removes the preference objective"
                )


def validation_capabilities(chain: Chain, launch: Launch) -> dict[str, Any]:
    from smaug.training.recipes import CPU_CAPABILITIES, H100_NODE_CAPABILITIES

    if chain.hardware.get("accelerator") == "cpu":
        return CPU_CAPABILITIES
    return {**H100_NODE_CAPABILITIES, "n_gpu": launch.world_size, "n_node": launch.nnodes}


def validate_stages(
    chain: Chain, launch: Launch, tracking: dict[int, dict[str, Any]], stages: list[ChainStage] | None = None
) -> dict[int, Any]:
    """axolotl's own validation (with the DPOP plugin's) of each stage as it will run, before any stage trains.
    Returns the validated configs by stage index."""
    from smaug.training.recipes import validate_offline

    capabilities = validation_capabilities(chain, launch)
    validated = {}
    for stage in stages if stages is not None else chain.stages:
        where = stage.where(chain.name)
        cfg = validate_offline({**stage.recipe, **tracking.get(stage.index, {})}, capabilities=capabilities, name=where)
        bad = _non_finite(dict(cfg))
        if bad:
            raise UserError(
                f"{where}: `{bad[0]}` becomes {bad[1]} in axolotl's config; training settings must be finite numbers"
            )
        _check_names(cfg, where)
        validated[stage.index] = cfg
    return validated


# axolotl's own schedulers besides transformers' (axolotl.core.builders.base: `alternate_lr_scheduler_type`)
_AXOLOTL_SCHEDULERS = {"one_cycle", "rex"}


def _check_names(cfg: Any, where: str) -> None:
    """Names axolotl's validation lets through as free strings but the trainer rejects only when it is built,
    after the earlier stages have trained."""
    from axolotl.utils.schemas.enums import CustomSupportedOptimizers
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    for key, known in (
        ("optimizer", {o.value for o in OptimizerNames} | {o.value for o in CustomSupportedOptimizers}),
        ("lr_scheduler", {s.value for s in SchedulerType} | _AXOLOTL_SCHEDULERS),
    ):
        value = cfg.get(key)
        value = getattr(value, "value", value)
        if value is not None and value not in known:
            raise UserError(
                f"{where}: `{key}: {value}` is not one transformers or axolotl knows; use one of "
                f"{', '.join(sorted(known))}"
            )
