"""Hub repo ids, local paths and model references, checked before anything loads or uploads."""

from __future__ import annotations

import fnmatch
import json
import os
import re
from pathlib import Path

from smaug.common.errors import UserError

_ASCII_REPO_ID = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?")
# The weight files transformers (and PEFT) look for, and the files a tokenizer is built from (any one set).
WEIGHT_NAMES = "model.safetensors model.safetensors.index.json pytorch_model.bin pytorch_model.bin.index.json".split()
WEIGHT_NAMES += ["adapter_model.safetensors", "adapter_model.bin"]
VOCABULARIES = [
    v.split("+") for v in "tokenizer.json tokenizer.model vocab.json+merges.txt vocab.txt *.tiktoken".split()
]
NO_TOKENIZER = "no tokenizer files (tokenizer.json, tokenizer.model, vocab.json + merges.txt, vocab.txt or *.tiktoken)"


def repo_id_problem(value: object, *, namespace: bool = True) -> str | None:
    """Why ``value`` is not a Hub repo id (None when it is). ``namespace``: require `org/name`."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as err:
        return str(err)
    # huggingface_hub's regex takes Unicode `\w` and a `$` that matches before a trailing newline, so it lets
    # `org/modèle` and `org/name\n` through while its documented rule (and the Hub) is ASCII only.
    if not _ASCII_REPO_ID.fullmatch(value):
        return "only ASCII letters, digits, '-', '_' and '.' are allowed, with at most one '/'"
    return "it has no namespace; expected `org/name`" if namespace and "/" not in value else None


def check_repo_id(value: object, what: str, example: str = "abacusai/Smaug-34B-v0.1") -> str:
    """``value`` if it is an `org/name` repo id, else a UserError naming ``what`` (e.g. `--repo`)."""
    problem = repo_id_problem(value)
    if problem:
        raise UserError(f"{what} {value!r} is not a Hub repo id: {problem} (for example {example}).")
    return str(value)


def looks_local(value: object) -> bool:
    """Whether a model, tokenizer or data reference names a local path rather than a Hub id: written as a path,
    not a repo id, existing here or under the repository root, or inside a folder that exists here
    (`outputs/run1` with `outputs/` here is a path not yet written, not a Hub id)."""
    from smaug.common.paths import repo_path  # paths imports this module

    text, path = str(value), Path(str(value)).expanduser()
    return (
        text.startswith(("./", "../", "/", "~"))
        or repo_id_problem(text, namespace=False) is not None
        or path.exists()
        or repo_path(text).exists()
        or ("/" in text and path.parent.is_dir())
    )


def display_name(model: str | None) -> str:
    """A Hub id as is, a local path as its folder name: cards and tables must not leak local paths."""
    return "unknown" if not model else Path(model.rstrip("/")).name or model if looks_local(model) else model


def hub_offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def has_vocabulary(names: list[str] | set[str]) -> bool:
    return any(all(fnmatch.filter(names, part) for part in vocabulary) for vocabulary in VOCABULARIES)


def check_model_ref(model: str, what: str = "model", revision: str | None = None) -> Path | None:
    """The local model folder ``model`` names, or None for a Hub id (in the cache, when offline); refused in one
    line before anything loads when it is neither, or a folder without a model config, weights or tokenizer."""
    path = Path(model).expanduser()
    if path.is_dir():
        names = os.listdir(path)
        try:
            config = json.loads((path / "config.json").read_bytes())
            problems = (
                [] if isinstance(config, dict) and isinstance(config.get("model_type"), str) else ["no model_type"]
            )
        except FileNotFoundError:
            problems = ["no config.json"]
        except (ValueError, RecursionError) as err:  # not JSON, not UTF-8
            problems = [f"{path / 'config.json'}: not a model config ({err})"]
        problems += [] if set(names) & set(WEIGHT_NAMES) else [f"no weights ({', '.join(WEIGHT_NAMES[:4])})"]
        problems += [] if has_vocabulary(names) else [NO_TOKENIZER]
        if problems:
            raise UserError(f"{what} {model}: {'; '.join(problems)}; pass a folder save_pretrained wrote, or a Hub id")
        return path.resolve()
    if path.exists() or looks_local(model):
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise UserError(f"{what} folder {model} {state} (resolved to {path.resolve()}); check the path")
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json", revision=revision), str):
            raise UserError(
                f"{what} {model!r} (revision {revision or 'main'}) is not in the local Hugging Face cache and "
                f"HF_HUB_OFFLINE=1 forbids downloading it: download it first (`hf download {model}`) or unset "
                f"HF_HUB_OFFLINE; for a local folder give its path (./{model})"
            )
    return None


def network_failure(err: BaseException | None) -> BaseException | None:
    """The network or Hub error ``err`` is, or was raised from (huggingface_hub wraps LFS upload failures in a
    bare RuntimeError); None for anything else: a bug, even one met while handling a network error, keeps its
    traceback."""
    import socket
    import ssl

    import httpx

    kinds = (httpx.HTTPError, httpx.InvalidURL, ConnectionError, TimeoutError, socket.gaierror, ssl.SSLError)
    for _ in range(100):  # `raise ... from` chains; a cycle ends here
        if err is None or isinstance(err, kinds):
            return err
        err = err.__cause__
    return None
