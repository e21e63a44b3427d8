"""Every stage checked before the first one trains: values that break training, then axolotl's own validation
(with the DPOP plugin's)."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictInt, ValidationError

from smaug.common.errors import UserError
from smaug.training.chains.plan import Chain, ChainStage, Launch

_Count = Annotated[StrictInt, Field(ge=1)] | None
_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)] | None
_NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)] | None
_Fraction = Annotated[float, Field(ge=0, lt=1)] | None


class _Sane(BaseModel):
    """Ranges of the numbers a recipe may set (dpop_lambda and rl_beta are the plugin's to check)."""

    max_steps: _Count = None
    micro_batch_size: _Count = None
    eval_batch_size: _Count = None
    gradient_accumulation_steps: _Count = None
    sequence_len: _Count = None
    save_total_limit: _Count = None
    lora_r: _Count = None
    warmup_steps: Annotated[StrictInt, Field(ge=0)] | None = None
    save_steps: _Positive = None
    logging_steps: _Positive = None
    eval_steps: _Positive = None
    num_epochs: _Positive = None
    learning_rate: _Positive = None
    adam_epsilon: _Positive = None
    lora_alpha: _Positive = None
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] | None = None
    weight_decay: _NonNegative = None
    max_grad_norm: _NonNegative = None
    val_set_size: _NonNegative = None
    adam_beta1: _Fraction = None
    adam_beta2: _Fraction = None
    lora_dropout: _Fraction = None


def _non_finite(value: Any, path: str = "") -> tuple[str, Any] | None:
    """The first NaN/inf float anywhere in a (nested) config, as (key path, value)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}".lstrip("."))
        if found:
            return found
    return None


def check_settings(chain: Chain) -> None:
    """Our own checks, on every stage before anything runs: one error naming the recipe, the key and what is wrong."""
    for stage in chain.stages:
        where = stage.where(chain.name)
        bad = _non_finite(stage.recipe)
        if bad:
            raise UserError(f"{where}: `{bad[0]}` is {bad[1]}; training settings must be finite numbers")
        settings = {k: v for k, v in stage.recipe.items() if not (k == "max_steps" and v == -1)}  # -1: by epochs
        try:
            _Sane.model_validate(settings)
        except ValidationError as err:
            first = err.errors()[0]
            raise UserError(f"{where}: `{first['loc'][0]}: {first['input']!r}`: {first['msg']}") from None


def validate_stages(
    chain: Chain, launch: Launch, tracking: dict[int, dict[str, Any]], stages: list[ChainStage] | None = None
) -> dict[int, Any]:
    """axolotl's own validation (with the DPOP plugin's) of each stage as it will run, before any stage trains.
    Returns the validated configs by stage index."""
    from axolotl.utils.schemas.enums import CustomSupportedOptimizers
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    from smaug.training.recipes import CPU_CAPABILITIES, H100_NODE_CAPABILITIES, validate_offline

    capabilities = {**H100_NODE_CAPABILITIES, "n_gpu": launch.world_size, "n_node": launch.nnodes}
    if chain.hardware.get("accelerator") == "cpu":
        capabilities = CPU_CAPABILITIES
    # Names axolotl's schema lets through as free strings but the trainer rejects only once it is built, after
    # the earlier stages have trained (`one_cycle` and `rex` are axolotl's own schedulers).
    known = {
        "optimizer": {o.value for o in OptimizerNames} | {o.value for o in CustomSupportedOptimizers},
        "lr_scheduler": {s.value for s in SchedulerType} | {"one_cycle", "rex"},
    }
    validated = {}
    for stage in chain.stages if stages is None else stages:
        where = stage.where(chain.name)
        cfg = validate_offline({**stage.recipe, **tracking.get(stage.index, {})}, capabilities=capabilities, name=where)
        bad = _non_finite(dict(cfg))
        if bad:
            raise UserError(
                f"{where}: `{bad[0]}` becomes {bad[1]} in axolotl's config; settings must be finite numbers"
            )
        for key, names in known.items():
            value = getattr(cfg.get(key), "value", cfg.get(key))
            if value is not None and value not in names:
                raise UserError(
                    f"{where}: `{key}: {value}` is not one transformers or axolotl knows; use one of "
                    f"{', '.join(sorted(names))}"
                )
        validated[stage.index] = cfg
    return validated
