"""The config fields DPOPPlugin adds to axolotl's schema, and the training arguments it hands the trainer."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field, model_validator

from axolotl_dpop.chunked_logps import DEFAULT_CHUNK_SIZE

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
    # Checked by DPOPPlugin.register (which sees the raw YAML and names the file); declared here so that
    # axolotl keeps them.
    dpop_chunked_logps: bool | None = Field(default=None, json_schema_extra={
        "description": "rl: dpop: compute log-probs from the last hidden states in chunks of tokens, never "
                       "holding the [2*batch, seq, vocab] logits (same losses and gradients)."})
    dpop_logps_chunk_size: int | None = Field(default=None, json_schema_extra={
        "description": f"completion tokens per chunk with dpop_chunked_logps (default {DEFAULT_CHUNK_SIZE})."})
    dpop_ref_logps_cache_dir: str | None = Field(default=None, json_schema_extra={
        "description": "rl: dpop with precompute_ref_log_probs: folder of the reference log-prob cache shared "
                       "by runs with the same reference model, data and tokenisation (default: "
                       "<dataset_prepared_path>/dpop_ref_logps)."})

    @model_validator(mode="after")
    def _lambda_needs_dpop(self):
        if self.dpop and self.dpop_lambda is None:
            self.dpop_lambda = DEFAULT_DPOP_LAMBDA
        if not self.dpop and self.dpop_lambda is not None:
            raise ValueError("dpop_lambda is set but rl is not dpop: set `rl: dpop`, or remove dpop_lambda.")
        return self


@dataclass
class DPOPTrainingArgs:
    """Fields axolotl merges into its training arguments (the plugin's ``get_training_args_mixin``), so
    that DPOPTrainer has them during ``__init__``, where TRL precomputes the reference log-probs."""

    dpop_chunked_logps: bool = False
    dpop_logps_chunk_size: int = DEFAULT_CHUNK_SIZE
    dpop_ref_logps_cache_dir: str | None = None
