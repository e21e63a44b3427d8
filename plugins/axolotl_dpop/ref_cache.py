"""An on-disk cache of precomputed reference log-probs, shared by every run with the same key.

With ``precompute_ref_log_probs: true`` the reference log-probs of every pair are computed once, before
training. Runs of a sweep (the β/λ grid, DPO as ``rl: dpop`` with λ = 0 vs DPOP) share the reference model,
the data and the tokenisation, so they share these numbers too: the first run writes
``<dir>/<key>.safetensors`` and every later run with the same key reads it instead of running the
reference forward over the whole dataset.

The key is the SHA-256 of:

* the reference model: a digest of every parameter and buffer the reference forward uses (name, dtype,
  shape, bytes; a PEFT adapter's own weights are left out, since the reference runs with it disabled),
  gathered one parameter at a time under ZeRO-3 and hashed by the ranks in turn; plus the model class,
  its attention implementation and its config (rope settings and the like change the numbers too);
* the data as tokenised: the ``prompt_ids``/``chosen_ids``/``rejected_ids`` columns in row order, which
  already reflect the chat template, the tokenizer and the dataset transforms;
* what the collator then does to them: class, ``max_length`` (axolotl's ``sequence_len``),
  ``truncation_mode``, ``padding_free``, ``pad_to_multiple_of``; and dropout being disabled.

TRL 1.9 keeps a cache of its own next to the dataset, keyed by ``hash_module(model)``; under ZeRO-3 that
hash reads the partitioned parameters, i.e. empty shards, and cannot tell two models of one architecture
apart. The plugin does not use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path

import torch

from axolotl_dpop.atomic import atomic_write

CACHE_FORMAT = 1
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
_CONFIG_KEYS_IGNORED = {
    "_name_or_path",
    "transformers_version",
    "use_cache",
    "architectures",
    "dtype",
    "torch_dtype",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "id2label",
    "label2id",
    "problem_type",
}
# PEFT wraps base layers; the same base weights must hash alike with and without the wrapper.
_PEFT_NAME_PARTS = re.compile(r"^base_model\.model\.|\.base_layer(?=\.)|\.original_module(?=\.)")


def gathered(*params):
    """Gather ZeRO-3-partitioned parameters for reading, with DeepSpeed's own API (a no-op for ordinary
    tensors and for parameters already gathered)."""
    to_gather = {id(p): p for p in params if p is not None and hasattr(p, "ds_id")}
    if to_gather:
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        to_gather = {k: p for k, p in to_gather.items() if p.ds_status != ZeroParamStatus.AVAILABLE}
    if not to_gather:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(to_gather.values()), modifier_rank=None)


def _digest_tensor(tensor: torch.Tensor) -> str:
    data = tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy()
    return hashlib.sha256(data).hexdigest()


def reference_tensors(model: torch.nn.Module, adapter_names: tuple[str, ...] = (), keep_adapter: str | None = None):
    """(canonical name, tensor) of what the reference forward reads: every parameter and buffer, without
    the weights of PEFT adapters (``adapter_names``) other than ``keep_adapter`` (the "ref" adapter, if any)."""
    drop = [f".{name}." for name in adapter_names if name != keep_adapter]
    out = []
    for kind, items in (("param", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in items:
            if any(part in f".{name}." for part in drop):
                continue
            out.append((f"{kind}:{_PEFT_NAME_PARTS.sub('', name)}", tensor))
    return out


def weights_digest(named_tensors, rank: int = 0, world_size: int = 1, all_gather_object=None) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of each tensor, in name order. With several processes each
    rank hashes every ``world_size``-th tensor and the digests are exchanged with ``all_gather_object``.
    ZeRO-3-partitioned parameters are gathered one at a time (a collective, so every rank takes part)."""
    mine = {}
    for index, (name, tensor) in enumerate(sorted(named_tensors, key=lambda item: item[0])):
        with gathered(tensor):
            if index % world_size == rank:
                mine[name] = f"{tensor.dtype}:{tuple(tensor.shape)}:{_digest_tensor(tensor)}"
    if world_size > 1:
        parts = [None] * world_size
        all_gather_object(parts, mine)
        for part in parts:
            mine.update(part)
    return hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()


def model_settings(model: torch.nn.Module) -> dict:
    config = getattr(model, "config", None)
    settings = {"class": type(model).__name__}
    if config is not None:
        settings["attn_implementation"] = getattr(config, "_attn_implementation", None)
        settings["config"] = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_KEYS_IGNORED}
    return settings


def dataset_digest(dataset) -> str:
    """SHA-256 of the token columns in row order (values and per-row lengths), read as Arrow in batches."""
    import numpy as np
    import pyarrow as pa

    h = hashlib.sha256()
    h.update(str(len(dataset)).encode())
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


def cache_key(components: dict) -> str:
    return hashlib.sha256(
        json.dumps({"format": CACHE_FORMAT, **components}, sort_keys=True, default=str).encode()
    ).hexdigest()[:32]


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"{key}.safetensors"


def load(path: Path, rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (chosen, rejected) log-probs, or None when absent or not for ``rows`` rows."""
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    chosen, rejected = tensors["ref_chosen_logps"], tensors["ref_rejected_logps"]
    if chosen.shape != (rows,) or rejected.shape != (rows,):
        return None
    return chosen, rejected


def save(path: Path, chosen: torch.Tensor, rejected: torch.Tensor, components: dict) -> Path:
    from safetensors.torch import save_file

    metadata = {"format": str(CACHE_FORMAT), "key": json.dumps(components, sort_keys=True, default=str)}
    tensors = {
        "ref_chosen_logps": chosen.detach().float().cpu().contiguous(),
        "ref_rejected_logps": rejected.detach().float().cpu().contiguous(),
    }
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
