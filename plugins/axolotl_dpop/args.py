"""The config fields DPOPPlugin adds to axolotl's schema, and the training arguments it hands the trainer."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

from axolotl_dpop.chunked_logps import DEFAULT_CHUNK_SIZE

DEFAULT_DPOP_LAMBDA = 50.0  # the paper's setting
# SLiC's regulariser weight. The Smaug paper gives no value for its SLiC runs; 0.1 is `lambda_coef` of the
# SLiC loss in ContextualAI/HALOs (config/loss/slic.yaml), the public SLiC-HF reimplementation we could read.
DEFAULT_SLIC_LAMBDA = 0.1


class DPOPArgs(BaseModel):
    """Declared so that axolotl's schema keeps the plugin's fields; they are checked (and the lambdas get their
    defaults) by `DPOPPlugin.register` on the raw YAML, which names the file: `plugin.validate_plugin_config`."""

    # Set by DPOPPlugin.register when the YAML says `rl: dpop` / `rl: slic` (axolotl's `rl` enum is closed, so
    # the plugin turns them into `rl: dpo` + `dpop: true` / `slic: true` before validation). Not written by hand.
    dpop: bool | None = Field(default=None, json_schema_extra={"description": "internal: rl is dpop"})
    slic: bool | None = Field(default=None, json_schema_extra={"description": "internal: rl is slic"})
    dpop_lambda: float | None = Field(
        default=None,
        json_schema_extra={
            "description": f"DPOP penalty weight lambda (>= 0; paper and default: {DEFAULT_DPOP_LAMBDA:g}). Only with rl: dpop."
        },
    )
    slic_lambda: float | None = Field(
        default=None,
        json_schema_extra={
            "description": "SLiC regulariser weight lambda on -log p(y_w|x) (>= 0; default "
            f"{DEFAULT_SLIC_LAMBDA}). Only with rl: slic."
        },
    )
    dpop_chunked_logps: bool | None = Field(
        default=None,
        json_schema_extra={
            "description": "rl: dpop: compute log-probs from the last hidden states in chunks of tokens, never "
            "holding the [2*batch, seq, vocab] logits (same losses and gradients)."
        },
    )
    dpop_logps_chunk_size: int | None = Field(
        default=None,
        json_schema_extra={
            "description": f"completion tokens per chunk with dpop_chunked_logps (default {DEFAULT_CHUNK_SIZE})."
        },
    )
    dpop_ref_logps_cache_dir: str | None = Field(
        default=None,
        json_schema_extra={
            "description": "rl: dpop with precompute_ref_log_probs: folder of the reference log-prob cache shared "
            "by runs with the same reference model, data and tokenisation (default: "
            "<dataset_prepared_path>/dpop_ref_logps)."
        },
    )


@dataclass
class DPOPTrainingArgs:
    """Fields axolotl merges into its training arguments (the plugin's ``get_training_args_mixin``), so
    that DPOPTrainer has them during ``__init__``, where TRL precomputes the reference log-probs."""

    dpop_chunked_logps: bool = False
    dpop_logps_chunk_size: int = DEFAULT_CHUNK_SIZE
    dpop_ref_logps_cache_dir: str | None = None
