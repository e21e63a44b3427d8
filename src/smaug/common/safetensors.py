"""The safetensors format's header, checked as a loader would read it: one parser for the chain (are a stage's
final weights whole?) and for publishing (is every uploaded weight file loadable, and what does its header say?)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SAFETENSORS_HEADER_LIMIT = 100_000_000
DTYPE_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}


def _no_duplicate_keys(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def safetensors_header(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(header, None) for a well-formed safetensors file, else (None, the problem). Well-formed: the header
    length fits in the file, the header is a JSON object of tensors (dtype, shape, data_offsets) plus an
    optional `__metadata__` of strings, each tensor's byte size matches its dtype and shape, and the tensors
    tile the data section exactly: contiguous, not overlapping, ending at the end of the file. A file that
    cannot be read raises OSError (the caller says what to do)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return None, f"{size} bytes, shorter than a safetensors header (empty or truncated)"
        length = int.from_bytes(prefix, "little")
        if length == 0 or length > SAFETENSORS_HEADER_LIMIT or 8 + length > size:
            return None, f"its header claims {length} bytes but the file has {size} (truncated or not safetensors)"
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        return None, f"its header is not valid JSON ({err})"
    if not isinstance(header, dict):
        return None, "its header is not a JSON object"
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        return None, "its __metadata__ is not a mapping of strings"
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            return None, f"tensor {name!r}: expected exactly dtype, shape and data_offsets"
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_BITS:
            return None, f"tensor {name!r}: unknown dtype {dtype!r}"
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            return None, f"tensor {name!r}: shape {shape!r} is not a list of sizes"
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            return None, f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]"
        bits = DTYPE_BITS[dtype] * math.prod(shape)
        if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
            return None, (
                f"tensor {name!r}: {dtype} {shape} needs {bits / 8:g} bytes, data_offsets give "
                f"{offsets[1] - offsets[0]}"
            )
        spans.append((offsets[0], offsets[1], name))
    if not spans:
        return None, "it holds no tensors"
    data_size, position = size - 8 - length, 0
    for begin, end, name in sorted(spans):
        if begin != position:
            what = (
                "overlaps the previous one"
                if begin < position
                else f"leaves a gap of {begin - position} bytes before it"
            )
            return None, f"tensor {name!r} {what} (data_offsets {begin}..{end})"
        position = end
    if position != data_size:
        return None, (
            f"the tensors need {position} data bytes, the file holds {data_size} "
            f"({'truncated' if position > data_size else 'trailing bytes'})"
        )
    return header, None
