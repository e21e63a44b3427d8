"""An on-disk cache of precomputed reference log-probs, `<dir>/<key>.safetensors`, shared by the runs of a sweep
that have the same key: the reference weights (gathered one parameter at a time under ZeRO-3, PEFT adapters
left out), the model's class and config, the tokenised data in row order, and the collator's settings.
A file is trusted only after it is read back: its stored key, its row count and finite values."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path

import torch
from axolotl.utils.logging import get_logger

from axolotl_dpop.atomic import atomic_write

LOG = get_logger(__name__)
CACHE_FORMAT = 1
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
_CONFIG_KEYS_IGNORED = set(
    "_name_or_path transformers_version use_cache architectures dtype torch_dtype output_attentions "
    "output_hidden_states return_dict id2label label2id problem_type".split()
)
# PEFT wraps base layers; the same base weights must hash alike with and without the wrapper.
_PEFT_NAME_PARTS = re.compile(r"^base_model\.model\.|\.base_layer(?=\.)|\.original_module(?=\.)")


def _gathered(tensor: torch.Tensor):
    """A ZeRO-3-partitioned parameter gathered for reading (a collective: every rank takes part)."""
    if getattr(tensor, "ds_status", None) is None or tensor.ds_status.name == "AVAILABLE":
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([tensor], modifier_rank=None)


def reference_tensors(model: torch.nn.Module, adapter_names: tuple[str, ...] = (), keep_adapter: str | None = None):
    """(canonical name, tensor) of what the reference forward reads: every parameter and buffer, without
    the weights of PEFT adapters (``adapter_names``) other than ``keep_adapter`` (the "ref" adapter, if any)."""
    drop = [f".{name}." for name in adapter_names if name != keep_adapter]
    out = []
    for kind, items in (("param", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in items:
            if not any(part in f".{name}." for part in drop):
                out.append((f"{kind}:{_PEFT_NAME_PARTS.sub('', name)}", tensor))
    return out


def weights_digest(named_tensors, rank: int = 0, world_size: int = 1, all_gather_object=None) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of each tensor, in name order. With several processes each
    rank hashes every ``world_size``-th tensor and the digests are exchanged with ``all_gather_object``."""
    mine = {}
    for index, (name, tensor) in enumerate(sorted(named_tensors, key=lambda item: item[0])):
        with _gathered(tensor):
            if index % world_size == rank:
                data = tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy()
                mine[name] = f"{tensor.dtype}:{tuple(tensor.shape)}:{hashlib.sha256(data).hexdigest()}"
    if world_size > 1:
        parts = [None] * world_size
        all_gather_object(parts, mine)
        for part in parts:
            mine.update(part)
    return hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()


def model_settings(model: torch.nn.Module) -> dict:
    settings = {"class": type(model).__name__}
    config = getattr(model, "config", None)
    if config is not None:
        settings["attn_implementation"] = getattr(config, "_attn_implementation", None)
        settings["config"] = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_KEYS_IGNORED}
    return settings


def dataset_digest(dataset) -> str:
    """SHA-256 of the token columns in row order (values and per-row lengths), read as Arrow in batches."""
    import numpy as np
    import pyarrow as pa

    h = hashlib.sha256(str(len(dataset)).encode())
    columns = [c for c in TOKEN_COLUMNS if c in dataset.column_names]
    if not columns:
        raise ValueError(f"reference log-prob cache: the dataset has none of the columns {TOKEN_COLUMNS}")
    for table in dataset.select_columns(columns).with_format("arrow").iter(batch_size=4096):
        for column in columns:
            array = pa.chunked_array(table[column]).combine_chunks()
            h.update(column.encode())
            h.update(np.asarray(array.value_lengths(), dtype=np.int64).tobytes())
            h.update(np.asarray(array.flatten(), dtype=np.int64).tobytes())
    return h.hexdigest()


def cache_file(cache_dir: str | Path, components: dict) -> tuple[Path, str]:
    """The cache file for ``components`` and the key text stored in it."""
    key = json.dumps({"format": CACHE_FORMAT, **components}, sort_keys=True, default=str)
    return Path(cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors", key


def load(path: Path, rows: int, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (chosen, rejected) log-probs; None when there are none or the file fails a check (said in
    one line: the caller recomputes and replaces it)."""
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            stored_key = (handle.metadata() or {}).get("key")
            chosen, rejected = handle.get_tensor("ref_chosen_logps"), handle.get_tensor("ref_rejected_logps")
    except (SafetensorError, OSError) as err:
        problem = f"cannot be read ({err})"
    else:
        problem = (
            "was written for other inputs (its stored key differs)"
            if stored_key != key
            else f"holds {tuple(chosen.shape)} and {tuple(rejected.shape)} values for {rows} pairs"
            if chosen.shape != (rows,) or rejected.shape != (rows,)
            else "holds values that are not finite"
            if not (chosen.isfinite().all() and rejected.isfinite().all())
            else None
        )
    if problem:
        LOG.warning(f"reference log-prob cache {path} {problem}: computing the reference log-probs again.")
        return None
    return chosen, rejected


def check_finite(chosen: torch.Tensor, rejected: torch.Tensor, name: str) -> None:
    bad = ~(chosen.isfinite() & rejected.isfinite())
    if bad.any():
        raise ValueError(
            f"the reference log-probs of {int(bad.sum())} of {len(bad)} {name} pairs are not finite (first: pair "
            f"{int(bad.nonzero()[0])}): the reference model overflows on them; check its weights and dtype. "
            "Nothing was cached or trained."
        )


def save(path: Path, chosen: torch.Tensor, rejected: torch.Tensor, key: str) -> Path:
    """Written whole under a temporary name, then renamed: two runs writing at once leave one run's file."""
    from safetensors.torch import save_file

    tensors = {
        "ref_chosen_logps": chosen.detach().float().cpu().contiguous(),
        "ref_rejected_logps": rejected.detach().float().cpu().contiguous(),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"key": key}))
