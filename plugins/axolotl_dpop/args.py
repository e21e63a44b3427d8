"""The config fields DPOPPlugin adds to axolotl's schema."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

DEFAULT_DPOP_LAMBDA = 50.0  # the paper's setting


class DPOPArgs(BaseModel):
    # Set by DPOPPlugin.register when the YAML says `rl: dpop` (axolotl's `rl` enum is closed, so the
    # plugin turns it into `rl: dpo` + `dpop: true` before validation). Not meant to be written by hand.
    dpop: bool | None = Field(default=None, json_schema_extra={"description": "internal: rl is dpop"})
    dpop_lambda: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        json_schema_extra={"description": "DPOP penalty weight lambda (>= 0; paper: 50). Only with rl: dpop."},
    )

    @model_validator(mode="after")
    def _lambda_needs_dpop(self):
        if self.dpop and self.dpop_lambda is None:
            self.dpop_lambda = DEFAULT_DPOP_LAMBDA
        if not self.dpop and self.dpop_lambda is not None:
            raise ValueError("dpop_lambda is set but rl is not dpop: set `rl: dpop`, or remove dpop_lambda.")
        return self
