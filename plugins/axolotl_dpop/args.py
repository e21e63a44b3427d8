"""The config fields DPOPPlugin adds to axolotl's schema, and the training arguments the trainers read."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field, StrictBool

from axolotl_dpop.chunked_logps import DEFAULT_CHUNK_SIZE

DEFAULT_DPOP_LAMBDA = 50.0  # the paper's setting
# SLiC's regulariser weight. The Smaug paper gives no value for its SLiC runs; 0.1 is `lambda_coef` of the
# SLiC loss in ContextualAI/HALOs (config/loss/slic.yaml), the public SLiC-HF reimplementation we could read.
DEFAULT_SLIC_LAMBDA = 0.1


def _lambda(description: str):
    return Field(None, ge=0, allow_inf_nan=False, strict=True, description=description)


class DPOPArgs(BaseModel):
    """Checked on the raw YAML by `plugin.validate_plugin_config` (which names the file), then by axolotl's
    schema, which includes this model."""

    # Set by DPOPPlugin.register for `rl: dpop` / `rl: slic`, which it turns into `rl: dpo` (axolotl's enum is closed).
    dpop: bool | None = Field(None, description="internal: rl is dpop")
    slic: bool | None = Field(None, description="internal: rl is slic")
    dpop_lambda: float | None = _lambda(
        f"rl: dpop's penalty weight, a number >= 0 (paper, default: {DEFAULT_DPOP_LAMBDA:g})"
    )
    slic_lambda: float | None = _lambda(f"rl: slic's regulariser weight, a number >= 0 (default {DEFAULT_SLIC_LAMBDA})")
    dpop_chunked_logps: StrictBool | None = Field(
        None,
        description="rl: dpop: log-probs from the last hidden states in chunks of tokens, never holding the "
        "[2*batch, seq, vocab] logits (same losses and gradients)",
    )
    dpop_logps_chunk_size: int | None = Field(
        None, ge=1, strict=True, description=f"completion tokens per chunk, >= 1 (default {DEFAULT_CHUNK_SIZE})"
    )
    dpop_shared_prefix: StrictBool | None = Field(
        None,
        description="rl: dpop or slic: one sequence per pair (the common prefix once, then each answer's rest), "
        "same losses and gradients with fewer tokens; uses the chunked head",
    )
    dpop_group_pairs: StrictBool | None = Field(
        None,
        description="with dpop_shared_prefix: pairs with the same prompt and chosen answer in one micro-batch and "
        "one sequence (ARC, HellaSwag); groups, not pairs, are shuffled",
    )
    dpop_ref_logps_cache_dir: str | None = Field(
        None,
        pattern=r"\S",
        strict=True,
        description="folder of the reference log-prob cache of rl: dpop with precompute_ref_log_probs "
        "(default: <dataset_prepared_path>/dpop_ref_logps)",
    )


@dataclass
class DPOPTrainingArgs:
    """Merged by axolotl into its training arguments, so the trainers have them in ``__init__``, where TRL
    runs the precompute pass."""

    dpop_lambda: float = DEFAULT_DPOP_LAMBDA
    slic_lambda: float = DEFAULT_SLIC_LAMBDA
    dpop_chunked_logps: bool = False
    dpop_logps_chunk_size: int = DEFAULT_CHUNK_SIZE
    dpop_shared_prefix: bool = False
    dpop_group_pairs: bool = False
    dpop_ref_logps_cache_dir: str | None = None
