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

# The model-repo files, as huggingface_hub's allow/ignore patterns: top-level files only.
ALLOW_PATTERNS = """config.json generation_config.json adapter_config.json tokenizer.json tokenizer_config.json
    tokenizer.model special_tokens_map.json added_tokens.json vocab.json vocab.txt merges.txt chat_template.jinja
    chat_template.json README.md smaug_provenance.json USE_POLICY.md *.safetensors *.safetensors.index.json
    *.tiktoken LICENSE LICENSE.* LICENSE-* NOTICE NOTICE.*""".split()
IGNORE_PATTERNS = ["*/*"]  # checkpoints, logs, runs
SECRET_NAMES = """.env .env.* *.env .netrc _netrc .git-credentials .pypirc id_rsa* id_ed25519* *credential*
    *secret* *.pem *.key *token*""".split()
NOT_SECRET = ["tokenizer*", "special_tokens_map.json", "added_tokens.json"]
# Pickle can run code when loaded: never published, and refused while weights exist in it. Trainer state that
# Trainer/axolotl leave next to the model is not weights: never uploaded, not refused.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TRAINER_STATE = ["training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth"]
TOKEN_RE = re.compile(rb"hf_[A-Za-z0-9]{30,}")
TOKEN_MIN_LEN = len("hf_") + 30  # chunks overlap by this much, so no token is cut unseen
SCAN_CHUNK = 1024 * 1024
# Files that stay local are scanned up to this size (checkpoints hold GBs of optimizer state); uploaded files
# whatever their size. Uploaded JSON is parsed up to JSON_LIMIT (the largest tokenizer.json files are ~35 MB).
LOCAL_SCAN_LIMIT = 16 * 1024 * 1024
JSON_LIMIT = 64 * 1024 * 1024
MODEL_WEIGHTS, MODEL_INDEX = "model.safetensors", "model.safetensors.index.json"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def _read_error(path: Path, err: OSError) -> UserError:
    return UserError(
        f"{path}: cannot be read ({err.strerror or err}); fix its permissions or move it out of the folder."
    )


def file_has_token(path: Path, chunk_size: int = SCAN_CHUNK) -> bool:
    """Whether ``path`` holds an `hf_...` token (memory: one chunk, whatever the file's size)."""
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


def _has_token_in_strings(value: Any) -> bool:
    """The decoded strings of parsed JSON, keys included: JSON may spell a token with \\u escapes."""
    stack = [value]
    while stack:  # a loop: configs can nest deeply
        item = stack.pop()
        if isinstance(item, str) and TOKEN_RE.search(item.encode("utf-8", "surrogatepass")):
            return True
        stack.extend(
            [*item.keys(), *item.values()] if isinstance(item, dict) else item if isinstance(item, list) else []
        )
    return False


def _zeros(path: Path) -> bool:
    """Whether the file starts with a chunk of zero bytes (a sparse or pre-allocated file, an interrupted copy)."""
    with path.open("rb") as handle:
        return not handle.read(SCAN_CHUNK).strip(b"\0")


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(value, None), or (None, why it is not JSON a loader would read)."""
    size = path.stat().st_size
    if size > JSON_LIMIT:  # never read into memory whole
        return (
            None,
            f"a {size / 2**20:.0f} MiB JSON file, larger than any config or tokenizer ({JSON_LIMIT // 2**20} MiB)",
        )
    try:
        return json.loads(path.read_bytes().decode("utf-8")), None
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 (byte {err.start})"
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    except RecursionError:
        return None, "nested too deeply to be a config"


def _read_safetensors(path: Path) -> tuple[set[str], Any]:
    """(tensor names, the parsed header) once safetensors' own loader accepted the file (header, offsets, sizes);
    SafetensorError otherwise."""
    from safetensors import safe_open

    with safe_open(path, "np") as weights:
        names = set(weights.keys())
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
    """Decide what would be uploaded; refuse (UserError) on secrets, pickled weights, or a repo a user could
    not load. Reads every uploaded file except the tensor data of weights."""
    from huggingface_hub.utils import filter_repo_objects
    from safetensors import SafetensorError

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: not a folder; pass the trained model's output folder.")
    plan = UploadPlan(model_dir)
    secrets, pickles, zeros, broken = [], [], [], []
    links = set()  # top-level symlinks
    tensors: dict[str, set[str]] = {}  # uploaded safetensors -> tensor names
    configs: dict[str, Any] = {}  # uploaded JSON files -> value
    paths = sorted(p for p in model_dir.rglob("*") if p.is_file() or p.is_symlink())
    files = [p.relative_to(model_dir).as_posix() for p in paths if not p.is_symlink()]
    uploaded = set(filter_repo_objects(files, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS))
    for path in paths:
        rel, name = path.relative_to(model_dir).as_posix(), path.name
        if _matches(name.lower(), SECRET_NAMES) and not _matches(name.lower(), NOT_SECRET):
            secrets.append(f"{rel} (name looks like a secret)")
            continue
        if path.is_symlink():  # never followed: it may point anywhere (or nowhere)
            plan.skipped.append((rel, "a symlink"))
            links.update([] if "/" in rel else [rel])
            continue
        try:
            if name.lower().endswith(PICKLE_SUFFIXES) and not _matches(name, TRAINER_STATE):
                (zeros if _zeros(path) else pickles).append(rel)
            if rel not in uploaded:
                plan.skipped.append((rel, "not a model-repo file"))
                if path.stat().st_size <= LOCAL_SCAN_LIMIT and file_has_token(path):
                    secrets.append(f"{rel} (contains what looks like a Hugging Face token, hf_...)")
                continue
            plan.files.append((rel, path.stat().st_size))
            value = None
            if name.endswith(".safetensors"):
                try:
                    tensors[rel], value = _read_safetensors(path)
                except SafetensorError as err:  # the loader's reason, less its prefix and list of dtypes
                    why = str(err).removeprefix("Error while deserializing header: ").split(", expected one of")[0]
                    size = path.stat().st_size
                    why = (
                        "empty"
                        if not size
                        else "starts with zero bytes, not a safetensors header"
                        if _zeros(path)
                        else why
                    )
                    broken.append(f"{rel}: {why} ({size} bytes)")
                    continue
                broken += [] if tensors[rel] else [f"{rel}: it holds no tensors"]
            elif file_has_token(path):
                secrets.append(f"{rel} (contains what looks like a Hugging Face token, hf_...)")
                continue
            elif name.endswith(".json"):
                value, problem = _read_json(path)
                if problem:
                    broken.append(f"{rel}: {problem}")
                    continue
                configs[rel] = value
        except OSError as err:
            raise _read_error(path, err) from err
        if _has_token_in_strings(value):
            where = "its header or __metadata__ contains" if name.endswith(".safetensors") else "contains"
            secrets.append(f"{rel} ({where} what looks like a Hugging Face token, hf_...)")
    if secrets:
        raise UserError(
            f"{model_dir}: refusing to publish, secret-looking file(s) are in the folder: {', '.join(secrets)}. "
            "Move them out of the model folder (tokens belong in HF_TOKEN or `hf auth login`), then run again."
        )
    if zeros:
        raise UserError(
            f"{model_dir}: refusing to publish, {', '.join(zeros)} start(s) with zero bytes: not weights, but a "
            "sparse or pre-allocated file or an interrupted copy. Delete it or copy it again, then run again."
        )
    if pickles:
        raise UserError(
            f"{model_dir}: refusing to publish, pickled weight file(s) are in the folder: {', '.join(pickles)}. "
            "Pickle can run code when loaded. Save the model with safetensors (axolotl `save_safetensors: true`, "
            "or `model.save_pretrained(dir, safe_serialization=True)`), then delete the pickle files."
        )
    names = {rel for rel, _ in plan.files}
    plan.kind, problems = _loadability(names, links, tensors, configs)
    if broken + problems:
        raise UserError(
            f"{model_dir}: refusing to publish a repo nobody could load: {'; '.join(broken + problems)}. Publish "
            "the folder `save_pretrained` (or axolotl's output_dir) wrote, complete; see model_cards/README.md, "
            "'What a loadable repo is'."
        )
    plan.card_missing = "README.md" not in names
    return plan


def _loadability(
    names: set[str], links: set[str], tensors: dict[str, set[str]], configs: dict[str, Any]
) -> tuple[str, list[str]]:
    """(the kind of repo, why a user could not load it). ``names``: uploaded top-level files; JSON and safetensors
    files that did not parse are already reported and missing from ``configs`` / ``tensors``."""

    def missing(name: str, what: str = "") -> str:
        if name in links:
            return f"{name} is a symlink, and symlinks are not uploaded (copy the file it points to in its place)"
        return f"no {name}{what}"

    adapter = ADAPTER_CONFIG in names | links
    full = bool({MODEL_WEIGHTS, MODEL_INDEX} & (names | links)) or not adapter
    problems: list[str] = []
    if adapter:
        config = configs.get(ADAPTER_CONFIG, {})
        base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
        if ADAPTER_CONFIG not in names:
            problems.append(missing(ADAPTER_CONFIG))
        elif not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
            problems.append(f"{ADAPTER_CONFIG} has no peft_type")
        elif looks_local(base):
            problems.append(
                f"{ADAPTER_CONFIG}: base_model_name_or_path {base!r} is not a Hub id, so nobody else can load the "
                "adapter's base; set it to the Hub id the base came from"
            )
        if ADAPTER_WEIGHTS not in names:
            problems.append(missing(ADAPTER_WEIGHTS, " (the adapter's weights)"))
    if full:
        config = configs.get("config.json")
        if "config.json" not in names:
            problems.append(missing("config.json"))
        elif "config.json" in configs and not (isinstance(config, dict) and isinstance(config.get("model_type"), str)):
            problems.append("config.json has no model_type (transformers cannot tell which model class to build)")
        if not {MODEL_WEIGHTS, MODEL_INDEX} & names:
            others = sorted(n for n in names if n.endswith(".safetensors"))
            link = next((n for n in (MODEL_WEIGHTS, MODEL_INDEX) if n in links), None)
            found = f" (transformers loads only these names; found {', '.join(others)})" if others else ""
            problems.append((missing(link) if link else f"no {MODEL_WEIGHTS} or {MODEL_INDEX}") + found)
        if MODEL_INDEX in configs:
            problems += _index_problems(configs[MODEL_INDEX], names, links, tensors)
        if not has_vocabulary(names):
            problems.append(NO_TOKENIZER + "".join(f"; {n} is a symlink" for n in sorted(links) if n.startswith("tok")))
    return " + ".join(kind for kind, wanted in (("adapter", adapter), ("full model", full)) if wanted), problems


def _index_problems(index: Any, names: set[str], links: set[str], tensors: dict[str, set[str]]) -> list[str]:
    """A sharded checkpoint loads only if every shard the index names is there, each tensor where the index
    says, and no shard holds a tensor the index does not map to it."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not weight_map or not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        return [f"{MODEL_INDEX} has no weight_map of tensor name -> shard file"]
    problems = []
    by_shard: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(tensor)
    for shard, mapped in sorted(by_shard.items()):
        if "/" in shard or not shard.endswith(".safetensors"):
            problems.append(f"{MODEL_INDEX} names {shard!r}, not a safetensors file in the folder")
        elif shard not in names:
            state = "a symlink (not uploaded)" if shard in links else "missing from the folder"
            problems.append(f"{MODEL_INDEX} names {shard}, {state}")
        elif shard in tensors:
            if mapped - tensors[shard]:
                extra = sorted(mapped - tensors[shard])
                problems.append(
                    f"{MODEL_INDEX} maps {len(extra)} tensor(s) to {shard} that it does not hold (e.g. {extra[0]})"
                )
            if tensors[shard] - mapped:
                extra = sorted(tensors[shard] - mapped)
                problems.append(
                    f"{shard} holds {len(extra)} tensor(s) {MODEL_INDEX} does not map to it (e.g. {extra[0]})"
                )
    return problems
