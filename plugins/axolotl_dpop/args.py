"""The config fields DPOPPlugin adds to axolotl's schema."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

DEFAULT_DPOP_LAMBDA = 50.0  # the paper's setting
# SLiC's regulariser weight. The Smaug paper gives no value for its SLiC runs; 0.1 is `lambda_coef` of the
# SLiC loss in ContextualAI/HALOs (config/loss/slic.yaml), the public SLiC-HF reimplementation we could read.
DEFAULT_SLIC_LAMBDA = 0.1


class DPOPArgs(BaseModel):
    # Set by DPOPPlugin.register when the YAML says `rl: dpop` / `rl: slic` (axolotl's `rl` enum is closed, so
    # the plugin turns them into `rl: dpo` + `dpop: true` / `slic: true` before validation). Not written by hand.
    dpop: bool | None = Field(default=None, json_schema_extra={"description": "internal: rl is dpop"})
    slic: bool | None = Field(default=None, json_schema_extra={"description": "internal: rl is slic"})
    dpop_lambda: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        json_schema_extra={"description": "DPOP penalty weight lambda (>= 0; paper: 50). Only with rl: dpop."},
    )
    slic_lambda: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        json_schema_extra={"description": "SLiC regulariser weight lambda on -log p(y_w|x) (>= 0; default "
                                          f"{DEFAULT_SLIC_LAMBDA}). Only with rl: slic."},
    )

    @model_validator(mode="after")
    def _lambdas_need_their_rl(self):
        for rl, field, default in (("dpop", "dpop_lambda", DEFAULT_DPOP_LAMBDA),
                                   ("slic", "slic_lambda", DEFAULT_SLIC_LAMBDA)):
            if getattr(self, rl) and getattr(self, field) is None:
                setattr(self, field, default)
            if not getattr(self, rl) and getattr(self, field) is not None:
                raise ValueError(f"{field} is set but rl is not {rl}: set `rl: {rl}`, or remove {field}.")
        return self
