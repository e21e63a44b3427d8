"""Hugging Face Hub repo ids: one validator (huggingface_hub's own), telling ids from local paths, and which
exceptions mean "the network or the Hub failed" (not a bug)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from smaug.common.errors import UserError

_ASCII_REPO_ID = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?")


def repo_id_problem(value: object, *, namespace: bool = True) -> str | None:
    """Why ``value`` is not a Hub repo id (None when it is). ``namespace``: require `org/name`."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(value, str) or not value:
        return "it is empty" if not value else f"it is a {type(value).__name__}, not text"
    try:
        validate_repo_id(value)
    except HFValidationError as err:
        return str(err)
    # huggingface_hub's regex uses Unicode `\w` and a `$` that matches before a trailing newline, so it lets
    # `org/modèle` and `org/name\n` through while its own documented rule (and the Hub) is ASCII only: a
    # dry run must refuse what the real upload would fail on.
    if not _ASCII_REPO_ID.fullmatch(value):
        return "only ASCII letters, digits, '-', '_' and '.' are allowed, with at most one '/'"
    if namespace and "/" not in value:
        return "it has no namespace; expected `org/name`"
    return None


def is_repo_id(value: object, *, namespace: bool = True) -> bool:
    return repo_id_problem(value, namespace=namespace) is None


def check_repo_id(value: object, what: str, example: str = "abacusai/Smaug-34B-v0.1") -> str:
    """``value`` if it is an `org/name` repo id, else a UserError naming ``what`` (e.g. `--repo`)."""
    problem = repo_id_problem(value)
    if problem:
        raise UserError(f"{what} {value!r} is not a Hub repo id: {problem} (for example {example}).")
    return str(value)


def looks_like_hub_id(name: str | None) -> bool:
    """`org/name` that is not also an existing local path (a local folder wins, as transformers does)."""
    return bool(name) and is_repo_id(name) and not Path(name).expanduser().exists()


def display_name(model: str | None) -> str:
    """A Hub id as is; a local path as its folder name (cards and tables must not leak local paths)."""
    if not model:
        return "unknown"
    return model if looks_like_hub_id(model) else Path(model.rstrip("/")).name or model


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_model_ref(model: str, what: str = "model") -> None:
    """Fail before loading anything when a model is neither a local folder nor a Hub id (cached when offline)."""
    if Path(model).expanduser().is_dir():
        return
    if not is_repo_id(model) or model.startswith("."):
        raise UserError(f"{what} {model!r}: no such folder; pass a local model folder or a Hub id (org/name)")
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(model, "config.json"), str):
            return  # in the local Hub cache: loads offline
        raise UserError(
            f"{what} {model!r}: not a local folder and HF_HUB_OFFLINE is set; download it first or pass a local path"
        )


def network_failure(err: BaseException) -> BaseException | None:
    """The network/Hub error behind ``err`` (itself or an exception it was raised from), or None when ``err``
    is something else (a bug must keep its traceback). huggingface_hub raises httpx errors (connection resets,
    `RemoteProtocolError`, timeouts), `HfHubHTTPError` for HTTP statuses, `OSError`s for sockets, and wraps
    LFS upload failures in a bare `RuntimeError` whose cause is the real error."""
    import socket
    import ssl

    import httpx

    kinds: tuple[type[BaseException], ...] = (
        httpx.HTTPError,
        httpx.InvalidURL,
        ConnectionError,
        TimeoutError,
        socket.gaierror,
        ssl.SSLError,
    )
    try:
        import requests

        kinds += (requests.RequestException,)
    except ImportError:  # pragma: no cover - requests is optional for huggingface_hub 1.x
        pass
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:  # only `raise ... from`: a bug in an except
        seen.add(id(current))  # block that met a network error stays a bug
        if isinstance(current, kinds):
            return current
        current = current.__cause__
    return None
