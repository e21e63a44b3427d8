"""What a model folder would put on the Hub, checked before any request (model_cards/README.md, "What a
loadable repo is" and "What gets published")."""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smaug.common.errors import UserError
from smaug.common.hub import NO_TOKENIZER, has_vocabulary, looks_local

# The model-repo files, as huggingface_hub's allow/ignore patterns (top-level files only), and those a loader
# reads (a symlink there is a problem: symlinks are never followed nor uploaded).
ALLOW_PATTERNS = """config.json generation_config.json adapter_config.json tokenizer.json tokenizer_config.json
    tokenizer.model special_tokens_map.json added_tokens.json vocab.json vocab.txt merges.txt chat_template.jinja
    chat_template.json README.md smaug_provenance.json USE_POLICY.md *.safetensors *.safetensors.index.json
    *.tiktoken LICENSE LICENSE.* LICENSE-* NOTICE NOTICE.*""".split()
IGNORE_PATTERNS = ["*/*"]  # checkpoints, logs, runs
LOADED = "config.json adapter_config.json *.safetensors *.safetensors.index.json tokenizer.json tokenizer.model".split()
LOADED += ["vocab.*", "merges.txt", "*.tiktoken"]
SECRET_NAMES = ".env .env.* *.env .netrc _netrc .git-credentials .pypirc id_rsa* id_ed25519* *credential* *secret*"
SECRET_NAMES = [*SECRET_NAMES.split(), "*.pem", "*.key", "*token*"]
NOT_SECRET = ["tokenizer*", "special_tokens_map.json", "added_tokens.json"]
# Pickle can run code when loaded: refused while weights exist in it. Trainer state is not weights.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TRAINER_STATE = ["training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth"]
TOKEN_RE = re.compile(rb"hf_[A-Za-z0-9]{30,}")
TOKEN_MIN_LEN = len("hf_") + 30  # chunks overlap by this much, so no token is cut unseen
SCAN_CHUNK = 1024 * 1024
# Files that stay local are scanned up to LOCAL_SCAN_LIMIT (checkpoints hold GBs of optimizer state), uploaded
# ones whatever their size; uploaded JSON is parsed up to JSON_LIMIT (large tokenizer.json files are ~35 MB).
LOCAL_SCAN_LIMIT, JSON_LIMIT = 16 * 2**20, 64 * 2**20
MODEL_WEIGHTS, MODEL_INDEX = "model.safetensors", "model.safetensors.index.json"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
TOKEN = "contains what looks like a Hugging Face token (hf_...)"


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def file_has_token(path: Path, chunk_size: int = SCAN_CHUNK) -> bool:
    """Whether ``path`` holds an `hf_...` token (memory: one chunk, whatever the file's size)."""
    with path.open("rb") as handle:
        tail = b""
        while chunk := handle.read(chunk_size):
            if TOKEN_RE.search(tail + chunk):
                return True
            tail = (tail + chunk)[-TOKEN_MIN_LEN:]
    return False


def _json_has_token(value: Any) -> bool:
    # Decoded strings: JSON may spell a token with \u escapes that the byte scan cannot see.
    return bool(TOKEN_RE.search(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")))


def _zeros(path: Path) -> bool:
    """Whether the file starts with a chunk of zero bytes (sparse or pre-allocated, or an interrupted copy)."""
    with path.open("rb") as handle:
        return not handle.read(SCAN_CHUNK).strip(b"\0")


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(value, None), or (None, why no loader would read it)."""
    size = path.stat().st_size
    if size > JSON_LIMIT:  # never read into memory whole
        return None, f"{size / 2**20:.0f} MiB of JSON, more than any config or tokenizer ({JSON_LIMIT // 2**20} MiB)"
    try:
        return json.loads(path.read_bytes().decode("utf-8")), None
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 (byte {err.start})"
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    except RecursionError:
        return None, "nested too deeply to be a config"


def _read_safetensors(path: Path) -> tuple[set[str] | None, Any]:
    """(tensor names, the parsed header), once safetensors' own loader accepted the header, offsets and sizes;
    (None, why not) otherwise."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "np") as weights:
            names = set(weights.keys())
    except SafetensorError as err:  # the loader's reason, less its prefix and list of dtypes
        size = path.stat().st_size
        why = str(err).removeprefix("Error while deserializing header: ").split(", expected one of")[0]
        return None, f"{'empty' if not size else 'starts with zero bytes' if _zeros(path) else why} ({size} bytes)"
    with path.open("rb") as handle:  # the loader checked the length: at most its 100 MB header limit
        return names, json.loads(handle.read(int.from_bytes(handle.read(8), "little")))


@dataclass
class UploadPlan:
    model_dir: Path
    files: list[tuple[str, int]] = field(default_factory=list)  # (path in repo, size): exactly what goes up
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why it stays local)
    card_missing: bool = False
    kind: str = ""  # what a user loads it as: "full model", "adapter", or both

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def plan_upload(model_dir: str | Path) -> UploadPlan:
    """What would be uploaded; refused in one line listing every secret, pickle, and reason a user could not
    load the repo. Reads every uploaded file except the tensor data of weights."""
    from huggingface_hub.utils import filter_repo_objects

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: not a folder; pass the trained model's output folder.")
    plan, problems, links = UploadPlan(model_dir), [], []
    tensors: dict[str, set[str]] = {}  # uploaded safetensors -> tensor names
    configs: dict[str, Any] = {}  # uploaded JSON files -> value
    paths = sorted(p for p in model_dir.rglob("*") if p.is_file() or p.is_symlink())
    files = [p.relative_to(model_dir).as_posix() for p in paths if not p.is_symlink()]
    uploaded = set(filter_repo_objects(files, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS))
    for path in paths:
        rel, name = path.relative_to(model_dir).as_posix(), path.name
        if _matches(name.lower(), SECRET_NAMES) and not _matches(name.lower(), NOT_SECRET):
            problems.append(f"{rel}: a secret-looking file name")
        elif path.is_symlink():  # never followed: it may point anywhere (or nowhere)
            plan.skipped.append((rel, "a symlink"))
            links += [rel] if "/" not in rel and _matches(rel, LOADED) else []
        elif rel not in uploaded:
            plan.skipped.append((rel, "not a model-repo file"))
            if name.lower().endswith(PICKLE_SUFFIXES) and not _matches(name, TRAINER_STATE):
                zeros = "starts with zero bytes, not weights (a sparse or pre-allocated file, an interrupted copy)"
                problems.append(
                    f"{rel}: {zeros if _zeros(path) else 'pickled weights, which can run code when loaded'}"
                )
            if path.stat().st_size <= LOCAL_SCAN_LIMIT and file_has_token(path):
                problems.append(f"{rel}: {TOKEN}")
        elif name.endswith(".safetensors"):
            plan.files.append((rel, path.stat().st_size))
            tensors[rel], header = _read_safetensors(path)
            if tensors[rel] is None:
                problems.append(f"{rel}: {header}")
            elif not tensors[rel]:
                problems.append(f"{rel}: it holds no tensors")
            elif _json_has_token(header):
                problems.append(f"{rel}: its header or __metadata__ {TOKEN}")
        else:
            plan.files.append((rel, path.stat().st_size))
            value, why = _read_json(path) if name.endswith(".json") else (None, None)
            configs.update({rel: value} if name.endswith(".json") and not why else {})
            problems += [f"{rel}: {why}"] if why else []
            problems += [f"{rel}: {TOKEN}"] if file_has_token(path) or _json_has_token(value) else []
    names = {rel for rel, _ in plan.files}
    plan.kind, unloadable = _loadability(names, tensors, configs)
    problems += [f"{n} is a symlink, and symlinks are not uploaded (copy the file in its place)" for n in links]
    if problems or unloadable:
        raise UserError(
            f"{model_dir}: refusing to publish: {'; '.join(problems + unloadable)}. Move such files out of the folder "
            "(tokens belong in HF_TOKEN or `hf auth login`; save weights with safetensors) and publish the complete "
            "folder `save_pretrained` wrote (model_cards/README.md, 'What a loadable repo is'), then run again."
        )
    plan.card_missing = "README.md" not in names
    return plan


def _loadability(
    names: set[str], tensors: dict[str, set[str] | None], configs: dict[str, Any]
) -> tuple[str, list[str]]:
    """(the kind of repo, why a user could not load it). ``names``: the uploaded files; JSON files that did not
    parse are already reported and left out of ``configs``."""
    adapter = ADAPTER_CONFIG in names
    full = bool({MODEL_WEIGHTS, MODEL_INDEX} & names) or not adapter
    problems: list[str] = []
    if adapter:
        config = configs.get(ADAPTER_CONFIG)
        base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
        if ADAPTER_CONFIG in configs and not (isinstance(config, dict) and isinstance(config.get("peft_type"), str)):
            problems.append(f"{ADAPTER_CONFIG} has no peft_type")
        elif ADAPTER_CONFIG in configs and looks_local(base):
            problems.append(
                f"{ADAPTER_CONFIG}: base_model_name_or_path {base!r} is not a Hub id, so nobody else can load the "
                "adapter's base; set it to the Hub id the base came from"
            )
        problems += [] if ADAPTER_WEIGHTS in names else [f"no {ADAPTER_WEIGHTS} (the adapter's weights)"]
    if full:
        config = configs.get("config.json")
        if "config.json" not in names:
            problems.append("no config.json")
        elif "config.json" in configs and not (isinstance(config, dict) and isinstance(config.get("model_type"), str)):
            problems.append("config.json has no model_type (transformers cannot tell which model class to build)")
        if not {MODEL_WEIGHTS, MODEL_INDEX} & names:
            others = sorted(n for n in names if n.endswith(".safetensors"))
            found = f" (transformers loads only these names; found {', '.join(others)})" if others else ""
            problems.append(f"no {MODEL_WEIGHTS} or {MODEL_INDEX}{found}")
        if MODEL_INDEX in configs:
            problems += _index_problems(configs[MODEL_INDEX], names, tensors)
        problems += [] if has_vocabulary(names) else [NO_TOKENIZER]
    return " + ".join(kind for kind, wanted in (("adapter", adapter), ("full model", full)) if wanted), problems


def _index_problems(index: Any, names: set[str], tensors: dict[str, set[str] | None]) -> list[str]:
    """A sharded checkpoint loads only if every shard the index names is there, each tensor where the index
    says, and no shard holds a tensor the index does not map to it."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not weight_map or not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        return [f"{MODEL_INDEX} has no weight_map of tensor name -> shard file"]
    problems, by_shard = [], {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(tensor)
    for shard, mapped in sorted(by_shard.items()):
        held = tensors.get(shard) or set()
        if "/" in shard or not shard.endswith(".safetensors"):
            problems.append(f"{MODEL_INDEX} names {shard!r}, not a safetensors file in the folder")
        elif shard not in names:
            problems.append(f"{MODEL_INDEX} names {shard}, missing from the folder")
        elif tensors.get(shard) is not None:
            if mapped - held:
                extra = sorted(mapped - held)
                problems.append(
                    f"{MODEL_INDEX} maps {len(extra)} tensor(s) to {shard} that it does not hold (e.g. {extra[0]})"
                )
            if held - mapped:
                extra = sorted(held - mapped)
                problems.append(
                    f"{shard} holds {len(extra)} tensor(s) {MODEL_INDEX} does not map to it (e.g. {extra[0]})"
                )
    return problems
