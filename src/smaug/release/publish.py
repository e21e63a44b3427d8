"""`smaug release publish MODEL_DIR --repo org/name`: upload a trained model and its card to the Hub, safely.

Only what belongs in a model repo goes up (an allowlist of top-level files: safetensors weights and their
index, configs, tokenizer files, chat template, README.md, LICENSE/NOTICE, smaug_provenance.json). Everything
is checked BEFORE any request: a licence must be derivable, no pickled weights, no secret-looking files. The
repo is private unless --public. After the commit, the remote file list, sizes and hashes are compared with
the local files. The token comes from HF_TOKEN or the login cache and is never printed or written.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from smaug.common.errors import UserError
from smaug.common.hub import check_repo_id

# Top-level files a model repo may hold (exact names, then patterns).
UPLOAD_NAMES = {
    "config.json", "generation_config.json", "adapter_config.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
    "README.md", "smaug_provenance.json", "USE_POLICY.md",
}
UPLOAD_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "LICENSE", "LICENSE.*", "LICENSE-*", "NOTICE", "NOTICE.*", "*.tiktoken"]
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json"}
# Pickle formats can run code when loaded: never publish them, and refuse while weights exist in them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Trainer state (not weights) that Trainer/axolotl leave next to the model: never uploaded, not refused.
TRAINER_STATE = ["training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth"]
TOKEN_RE = re.compile(rb"hf_[A-Za-z0-9]{30,}")
SCAN_LIMIT = 16 * 1024 * 1024  # bytes; larger files are weights, not config/logs


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


@dataclass
class UploadPlan:
    model_dir: Path
    files: list[tuple[str, int]] = field(default_factory=list)  # (path in repo, size) — exactly what goes up
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why it stays local)
    card_missing: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def plan_upload(model_dir: str | Path) -> UploadPlan:
    """Decide what would be uploaded; refuse (UserError) on secrets, pickled weights or missing weights."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: not a folder; pass the trained model's output folder.")
    plan = UploadPlan(model_dir)
    secrets, pickles = [], []
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(model_dir).as_posix()
        name = path.name
        if _is_secret_name(name):
            secrets.append(f"{rel} (name looks like a secret)")
        elif path.is_file() and not name.endswith(".safetensors") and path.stat().st_size <= SCAN_LIMIT:
            if TOKEN_RE.search(path.read_bytes()):
                secrets.append(f"{rel} (contains what looks like a Hugging Face token, hf_...)")
        if name.lower().endswith(PICKLE_SUFFIXES) and not _matches(name, TRAINER_STATE):
            pickles.append(rel)
        if "/" in rel:
            plan.skipped.append((rel, "inside a subfolder (checkpoints, logs, runs are not published)"))
        elif path.is_symlink():
            plan.skipped.append((rel, "a symlink"))
        elif name in UPLOAD_NAMES or _matches(name, UPLOAD_PATTERNS):
            plan.files.append((rel, path.stat().st_size))
        else:
            plan.skipped.append((rel, "not a model-repo file"))
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
    if not any(rel.endswith(".safetensors") for rel in names):
        raise UserError(f"{model_dir}: no *.safetensors weights at the top of the folder; nothing to publish.")
    for index in sorted(n for n in names if n.endswith(".safetensors.index.json")):
        try:
            shards = set(json.loads((model_dir / index).read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{model_dir / index}: not a valid safetensors index ({err}).") from err
        missing = sorted(shards - names)
        if missing:
            raise UserError(f"{model_dir / index}: lists shard(s) missing from the folder: {', '.join(missing)}.")
    plan.card_missing = "README.md" not in names
    return plan


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def _prepare_card(model_dir: Path, plan: UploadPlan, repo_id: str, evals, lineage):
    """Render the card when missing; when present make sure it agrees with the lineage's licence."""
    from huggingface_hub import ModelCard

    from smaug.release.cards import check_card, render_card

    if plan.card_missing:
        return render_card(model_dir, evals, model_name=repo_id)
    content = (model_dir / "README.md").read_text(encoding="utf-8")
    problems = check_card(content)
    data = ModelCard(content).data.to_dict() if not problems else {}
    lic = lineage.license
    if not problems and (data.get("license"), data.get("license_name")) != (
        lic.license, lic.license_name if lic.license == "other" else None
    ):
        problems.append(
            f"its licence ({data.get('license')}, {data.get('license_name')}) differs from the lineage's "
            f"({lic.license}, {lic.license_name})"
        )
    if problems:
        raise UserError(
            f"{model_dir / 'README.md'}: {'; '.join(problems)}. Regenerate it with `smaug release card {model_dir}` "
            "(or delete it and publish again: a missing card is generated)."
        )
    return None


def _verify_remote(api, repo_id: str, plan: UploadPlan) -> list[str]:
    """Compare the remote tree with the local files: path, size and content hash. Returns extra remote paths."""
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils.sha import git_hash, sha_fileobj

    remote = {f.path: f for f in api.list_repo_tree(repo_id, recursive=True) if isinstance(f, RepoFile)}
    problems = []
    for rel, size in plan.files:
        entry = remote.get(rel)
        if entry is None:
            problems.append(f"{rel}: missing on the Hub")
            continue
        if entry.size != size:
            problems.append(f"{rel}: {entry.size} bytes on the Hub, {size} locally")
            continue
        local = plan.model_dir / rel
        if entry.lfs is not None:
            with local.open("rb") as handle:
                digest = sha_fileobj(handle).hex()
            if entry.lfs.sha256 != digest:
                problems.append(f"{rel}: sha256 on the Hub differs from the local file")
        elif entry.blob_id != git_hash(local.read_bytes()):
            problems.append(f"{rel}: git blob id on the Hub differs from the local file")
    if problems:
        raise UserError(f"{repo_id}: the uploaded files do not match the local folder: {'; '.join(problems)}")
    return sorted(set(remote) - {rel for rel, _ in plan.files} - {".gitattributes"})


def publish(model_dir: str | Path, repo_id: str, *, public: bool = False, dry_run: bool = False,
            evals: list[str | Path] | None = None, commit_message: str | None = None, out=print) -> dict:
    """Publish ``model_dir`` to ``repo_id``. Every refusal happens before the first request to the Hub."""
    from huggingface_hub import constants

    from smaug.release.cards import write_card
    from smaug.release.licenses import resolve_license

    model_dir = Path(model_dir)
    check_repo_id(repo_id, "--repo")
    plan = plan_upload(model_dir)
    lineage = resolve_license(model_dir)  # no licence -> UserError, nothing uploaded
    card = _prepare_card(model_dir, plan, repo_id, evals, lineage)
    if card is not None:
        plan.files.append(("README.md", len(str(card).encode("utf-8"))))
        plan.files.sort()
    visibility = "public" if public else "private"
    where = f"{constants.ENDPOINT}/{repo_id}"
    out(f"{'would upload' if dry_run else 'uploading'} {len(plan.files)} file(s), {_human(plan.total_bytes)} "
        f"({plan.total_bytes} bytes) to {where} ({visibility}); licence {lineage.license.describe()}")
    for rel, size in plan.files:
        note = "  (card generated at upload)" if rel == "README.md" and card is not None else ""
        out(f"  {size:>14}  {rel}{note}")
    for rel, why in plan.skipped:
        out(f"  not uploaded: {rel} ({why})")
    result = {"repo_id": repo_id, "endpoint": constants.ENDPOINT, "private": not public,
              "files": [rel for rel, _ in plan.files], "uploaded": False}
    if dry_run:
        out("dry run: nothing was uploaded.")
        return result

    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then publish again.")
    if card is not None:
        out(f"wrote {write_card(model_dir, card)}")
    api = HfApi(endpoint=constants.ENDPOINT, token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=not public, exist_ok=True)
        info = api.repo_info(repo_id, repo_type="model")
        if info.private is False and not public:
            raise UserError(
                f"{where} already exists and is public; nothing was uploaded. Pass --public to publish to it, "
                "or choose another --repo."
            )
        if info.private and public:
            out(f"note: {where} exists and is private; --public does not change an existing repo's visibility")
        operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(model_dir / rel)) for rel, _ in plan.files]
        commit = api.create_commit(
            repo_id, operations=operations, repo_type="model",
            commit_message=commit_message or f"Upload {model_dir.resolve().name} with smaug release publish",
        )
        extra = _verify_remote(api, repo_id, plan)
    except HfHubHTTPError as err:
        # The client's messages carry URLs and server text, never the Authorization header.
        raise UserError(f"{where}: Hub request failed: {err}") from err
    out(f"published {where} at commit {commit.oid}; remote files, sizes and hashes match the local folder")
    if extra:
        out(f"note: the repo also holds files not in this folder (left untouched): {', '.join(extra)}")
    result.update(uploaded=True, commit=commit.oid, extra_remote=extra)
    return result
