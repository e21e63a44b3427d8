"""What a model folder would put on the Hub, checked before any request: the allowlist of model-repo files,
no pickled weights, no secret-looking names, no Hugging Face token in any uploaded file (whatever its size) or
safetensors header, and a repo a user can load (see "What a loadable repo is" in model_cards/README.md)."""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smaug.common.errors import UserError
from smaug.common.hub import looks_like_hub_id
from smaug.common.safetensors import safetensors_header

# Top-level files a model repo may hold (exact names, then patterns).
UPLOAD_NAMES = {
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "README.md",
    "smaug_provenance.json",
    "USE_POLICY.md",
}
UPLOAD_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "LICENSE",
    "LICENSE.*",
    "LICENSE-*",
    "NOTICE",
    "NOTICE.*",
    "*.tiktoken",
]
TOKENIZER_FILES = {
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
}
# Pickle formats can run code when loaded: never publish them, and refuse while weights exist in them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Trainer state (not weights) that Trainer/axolotl leave next to the model: never uploaded, not refused.
TRAINER_STATE = ["training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth"]
TOKEN_RE = re.compile(rb"hf_[A-Za-z0-9]{30,}")
TOKEN_MIN_LEN = len("hf_") + 30  # the shortest match: chunks overlap by this much, so no token is cut unseen
SCAN_CHUNK = 1024 * 1024
# Files that stay local are scanned up to this size (they cannot leak through the upload; checkpoints hold GBs
# of optimizer state). Uploaded files are scanned whatever their size.
LOCAL_SCAN_LIMIT = 16 * 1024 * 1024

# What a user can load (model_cards/README.md, "What a loadable repo is"):
#   full model: config.json (a JSON object with `model_type`), weights under the names transformers looks for
#     (model.safetensors, or model.safetensors.index.json and every shard it names, each tensor where the
#     index says), and a tokenizer (one of VOCABULARIES);
#   adapter (PEFT): adapter_config.json (`peft_type`, `base_model_name_or_path` a Hub id) + adapter_model.safetensors.
# Every uploaded *.safetensors must parse (SAFETENSORS_* below) and every uploaded *.json must be JSON.
MODEL_WEIGHTS, MODEL_INDEX = "model.safetensors", "model.safetensors.index.json"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
VOCABULARIES = (
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("vocab.json", "merges.txt"),
    ("vocab.txt",),
    ("*.tiktoken",),
)


# safetensors' format: an 8-byte little-endian header length, a JSON header (at most this big, the library's
# own limit), then the tensors' bytes, each tensor at data_offsets [begin, end) relative to the data start.
def _is_secret_name(name: str) -> bool:
    lower = name.lower()
    if lower == ".env" or lower.startswith(".env.") or lower.endswith(".env"):
        return True
    if lower in {".netrc", "_netrc", ".git-credentials", ".pypirc"} or lower.startswith(("id_rsa", "id_ed25519")):
        return True
    if "credential" in lower or "secret" in lower or lower.endswith((".pem", ".key")):
        return True
    return "token" in lower and name not in TOKENIZER_FILES and not lower.startswith("tokenizer")


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _read_error(path: Path, err: OSError) -> UserError:
    return UserError(
        f"{path}: cannot be read ({err.strerror or err}); fix its permissions or move it out of the folder."
    )


def file_has_token(path: Path, chunk_size: int = SCAN_CHUNK) -> bool:
    """Whether ``path`` holds an `hf_...` token, read in chunks that overlap by the shortest token's length
    (memory stays at one chunk whatever the file's size)."""
    try:
        with path.open("rb") as handle:
            tail = b""
            while chunk := handle.read(chunk_size):
                window = tail + chunk
                if TOKEN_RE.search(window):
                    return True
                tail = window[-TOKEN_MIN_LEN:]
    except OSError as err:
        raise _read_error(path, err) from err
    return False


def _strings(value: Any):
    """Every string in a parsed JSON value, keys included (a loop: headers and configs can nest deeply)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _has_token_in_strings(value: Any) -> bool:
    """Decoded text matters too: JSON may spell a token with \\u escapes that the byte scan cannot see."""
    return any(TOKEN_RE.search(text.encode("utf-8", "surrogatepass")) for text in _strings(value))


def read_json_file(path: Path) -> tuple[Any, str | None]:
    """(value, None), or (None, why it is not JSON a loader would read)."""
    try:
        return json.loads(path.read_bytes().decode("utf-8")), None
    except OSError as err:
        raise _read_error(path, err) from err
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 (byte {err.start})"
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    except RecursionError:
        return None, "nested too deeply to be a config"


def tensor_names(header: dict[str, Any]) -> set[str]:
    return set(header) - {"__metadata__"}


@dataclass
class UploadPlan:
    model_dir: Path
    files: list[tuple[str, int]] = field(default_factory=list)  # (path in repo, size) — exactly what goes up
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why it stays local)
    card_missing: bool = False
    kind: str = ""  # what a user loads it as: "full model", "adapter", or both

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def plan_upload(model_dir: str | Path) -> UploadPlan:
    """Decide what would be uploaded; refuse (UserError) on secrets, pickled weights, or a repo a user could
    not load. Reads every uploaded file except the tensor data of weights."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: not a folder; pass the trained model's output folder.")
    plan = UploadPlan(model_dir)
    secrets, pickles, broken = [], [], []
    links: set[str] = set()  # top-level symlinks: never uploaded
    headers: dict[str, dict[str, Any]] = {}  # uploaded safetensors -> header
    configs: dict[str, Any] = {}  # uploaded JSON files -> value
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(model_dir).as_posix()
        name = path.name
        if name.lower().endswith(PICKLE_SUFFIXES) and not _matches(name, TRAINER_STATE):
            pickles.append(rel)
        if _is_secret_name(name):
            secrets.append(f"{rel} (name looks like a secret)")
            continue
        if path.is_symlink():  # never followed: it may point anywhere (or nowhere), and it is not uploaded
            plan.skipped.append((rel, "a symlink"))
            if "/" not in rel:
                links.add(rel)
            continue
        if "/" in rel:
            plan.skipped.append((rel, "inside a subfolder (checkpoints, logs, runs are not published)"))
            uploaded = False
        elif name in UPLOAD_NAMES or _matches(name, UPLOAD_PATTERNS):
            plan.files.append((rel, path.stat().st_size))
            uploaded = True
        else:
            plan.skipped.append((rel, "not a model-repo file"))
            uploaded = False
        token = f"{rel} (contains what looks like a Hugging Face token, hf_...)"
        if name.endswith(".safetensors"):
            if not uploaded:
                continue  # weights that stay local (old checkpoints)
            try:
                header, problem = safetensors_header(path)
            except OSError as err:
                raise _read_error(path, err) from err
            if problem:
                broken.append(f"{rel}: {problem}")
                continue
            headers[rel] = header
            # Every letter of valid JSON is inside a string, so the decoded strings cover the raw header bytes.
            if _has_token_in_strings(header):
                secrets.append(
                    f"{rel} (its header or __metadata__ contains what looks like a Hugging Face token, hf_...)"
                )
        elif uploaded or path.stat().st_size <= LOCAL_SCAN_LIMIT:
            if file_has_token(path):
                secrets.append(token)
            elif uploaded and name.endswith(".json"):
                value, problem = read_json_file(path)
                if problem:
                    broken.append(f"{rel}: {problem}")
                elif _has_token_in_strings(value):
                    secrets.append(token)
                else:
                    configs[rel] = value
    if secrets:
        raise UserError(
            f"{model_dir}: refusing to publish, secret-looking file(s) are in the folder: {', '.join(secrets)}. "
            "Move them out of the model folder (tokens belong in HF_TOKEN or `hf auth login`), then run again."
        )
    if pickles:
        raise UserError(
            f"{model_dir}: refusing to publish, pickled weight file(s) are in the folder: {', '.join(pickles)}. "
            "Pickle can run code when loaded. Save the model with safetensors (axolotl `save_safetensors: true`, "
            "or `model.save_pretrained(dir, safe_serialization=True)`), then delete the pickle files."
        )
    names = {rel for rel, _ in plan.files}
    plan.kind, problems = _loadability(names, links, headers, configs)
    problems = broken + problems
    if problems:
        raise UserError(
            f"{model_dir}: refusing to publish a repo nobody could load: {'; '.join(problems)}. "
            "Publish the folder `save_pretrained` (or axolotl's output_dir) wrote, complete; see model_cards/README.md, "
            "'What a loadable repo is'."
        )
    plan.card_missing = "README.md" not in names
    return plan


def _loadability(
    names: set[str], links: set[str], headers: dict[str, dict], configs: dict[str, Any]
) -> tuple[str, list[str]]:
    """(the kind of repo, why a user could not load it). ``names``: uploaded top-level files; JSON files and
    safetensors that did not parse are already reported and missing from ``configs`` / ``headers``."""
    problems: list[str] = []

    def missing(name: str, what: str = "") -> str:
        if name in links:
            return f"{name} is a symlink, and symlinks are not uploaded (copy the file it points to in its place)"
        return f"no {name}{what}"

    adapter = ADAPTER_CONFIG in names or ADAPTER_CONFIG in links
    full = bool({MODEL_WEIGHTS, MODEL_INDEX} & (names | links)) or not adapter
    kinds = []
    if adapter:
        kinds.append("adapter")
        config = configs.get(ADAPTER_CONFIG)
        if ADAPTER_CONFIG not in names:
            problems.append(missing(ADAPTER_CONFIG))
        elif isinstance(config, dict):
            base = config.get("base_model_name_or_path")
            if not isinstance(config.get("peft_type"), str):
                problems.append(f"{ADAPTER_CONFIG} has no peft_type")
            if not looks_like_hub_id(base):
                problems.append(
                    f"{ADAPTER_CONFIG}: base_model_name_or_path {base!r} is not a Hub id, so nobody else "
                    "can load the adapter's base; set it to the Hub id the base came from"
                )
        elif ADAPTER_CONFIG in configs:
            problems.append(f"{ADAPTER_CONFIG} is not a JSON object")
        if ADAPTER_WEIGHTS not in names:
            problems.append(missing(ADAPTER_WEIGHTS, " (the adapter's weights)"))
    if full:
        kinds.append("full model")
        config = configs.get("config.json")
        if "config.json" not in names:
            problems.append(missing("config.json"))
        elif "config.json" in configs and not (isinstance(config, dict) and isinstance(config.get("model_type"), str)):
            problems.append("config.json has no model_type (transformers cannot tell which model class to build)")
        if MODEL_WEIGHTS not in names and MODEL_INDEX not in names:
            others = sorted(n for n in names if n.endswith(".safetensors"))
            problems.append(
                (
                    missing(MODEL_WEIGHTS)
                    if MODEL_WEIGHTS in links
                    else missing(MODEL_INDEX)
                    if MODEL_INDEX in links
                    else f"no {MODEL_WEIGHTS} or {MODEL_INDEX}"
                )
                + (f" (transformers loads only these names; found {', '.join(others)})" if others else "")
            )
        if MODEL_INDEX in configs:
            problems += _index_problems(configs[MODEL_INDEX], names, links, headers)
        if not any(
            all(any(fnmatch.fnmatch(n, part) for n in names) for part in vocabulary) for vocabulary in VOCABULARIES
        ):
            problems.append(
                "no tokenizer files (tokenizer.json, tokenizer.model, vocab.json + merges.txt, vocab.txt or "
                "*.tiktoken)" + "".join(f"; {n} is a symlink" for n in sorted(links) if n in TOKENIZER_FILES)
            )
    return " + ".join(kinds), problems


def _index_problems(index: Any, names: set[str], links: set[str], headers: dict[str, dict]) -> list[str]:
    """A sharded checkpoint loads only if every shard the index names is there and each tensor is where the
    index says, and no shard holds a tensor the index does not map to it."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())
    ):
        return [f"{MODEL_INDEX} has no weight_map of tensor name -> shard file"]
    problems = []
    by_shard: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(tensor)
    for shard, tensors in sorted(by_shard.items()):
        if "/" in shard or shard in (".", "..") or not shard.endswith(".safetensors"):
            problems.append(f"{MODEL_INDEX} names {shard!r}, not a safetensors file in the folder")
        elif shard not in names:
            problems.append(
                f"{MODEL_INDEX} names {shard}, "
                + ("a symlink (not uploaded)" if shard in links else "missing from the folder")
            )
        elif shard in headers:
            have = tensor_names(headers[shard])
            if tensors - have:
                problems.append(
                    f"{MODEL_INDEX} maps {len(tensors - have)} tensor(s) to {shard} that it does not hold "
                    f"(e.g. {sorted(tensors - have)[0]})"
                )
            if have - tensors:
                problems.append(
                    f"{shard} holds {len(have - tensors)} tensor(s) {MODEL_INDEX} does not map to it "
                    f"(e.g. {sorted(have - tensors)[0]})"
                )
    return problems
