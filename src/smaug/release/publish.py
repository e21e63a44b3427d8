"""`smaug release publish MODEL_DIR --repo org/name`: the upload plan and the card checked before any request,
then one commit (private unless --public), verified file by file. The token is never printed or written."""

from __future__ import annotations

from pathlib import Path

from smaug.common.errors import UserError
from smaug.common.hub import check_repo_id, hub_offline, network_failure
from smaug.release.upload_plan import TOKEN_RE, UploadPlan, plan_upload


def _prepare_card(model_dir: Path, plan: UploadPlan, repo_id: str, evals, lineage):
    """The card to generate when the folder has none; an existing one must pass the checks and carry the
    lineage's licence."""
    from smaug.release.cards import check_card, render_card

    if plan.card_missing:
        card = render_card(model_dir, evals, model_name=repo_id, lineage=lineage)
        if TOKEN_RE.search(str(card).encode("utf-8")):  # it quotes provenance and summaries
            raise UserError(
                f"{model_dir}: refusing to publish, the generated card would contain what looks like a Hugging Face "
                "token (hf_...); find it in smaug_provenance.json or the --eval summaries."
            )
        return card
    readme = model_dir / "README.md"
    try:
        problems = check_card(readme.read_text(encoding="utf-8"), lineage.license)
    except UnicodeDecodeError as err:
        problems = [f"not UTF-8 text (byte {err.start})"]
    if problems:
        raise UserError(
            f"{readme}: {'; '.join(problems)}. Regenerate it with `smaug release card {model_dir}` "
            "(or delete it and publish again: a missing card is generated)."
        )
    return None


def _verify_remote(api, repo_id: str, plan: UploadPlan, operations) -> list[str]:
    """The remote tree against the local files: path, size, and the hash huggingface_hub computed for the
    upload (LFS files are not hashed a second time: tens of GB at 34B/72B). Returns extra remote paths."""
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils.sha import git_hash

    remote = {f.path: f for f in api.list_repo_tree(repo_id, recursive=True) if isinstance(f, RepoFile)}
    sha256 = {op.path_in_repo: op.upload_info.sha256.hex() for op in operations}
    problems = []
    for rel, size in plan.files:
        entry = remote.get(rel)
        if entry is None or entry.size != size:
            problems.append(f"{rel}: {entry.size if entry else 'missing'} on the Hub, {size} bytes locally")
        elif entry.lfs is not None and entry.lfs.sha256 != sha256[rel]:
            problems.append(f"{rel}: sha256 on the Hub differs from the local file")
        elif entry.lfs is None and entry.blob_id != git_hash((plan.model_dir / rel).read_bytes()):
            problems.append(f"{rel}: git blob id on the Hub differs from the local file")
    if problems:
        raise UserError(f"{repo_id}: the uploaded files do not match the local folder: {'; '.join(problems)}")
    return sorted(set(remote) - {rel for rel, _ in plan.files} - {".gitattributes"})


def publish(
    model_dir: str | Path,
    repo_id: str,
    *,
    public: bool = False,
    dry_run: bool = False,
    evals: list[str | Path] | None = None,
    commit_message: str | None = None,
    out=print,
) -> dict:
    """Publish ``model_dir`` to ``repo_id``. Every refusal happens before the first request to the Hub."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
    from tqdm import tqdm

    from smaug.release.cards import write_card
    from smaug.release.lineage import resolve_license

    model_dir = Path(model_dir)
    check_repo_id(repo_id, "--repo")
    plan = plan_upload(model_dir)
    lineage = resolve_license(model_dir)  # no licence: refused, nothing uploaded
    card = _prepare_card(model_dir, plan, repo_id, evals, lineage)
    if card is not None:
        plan.files = sorted([*plan.files, ("README.md", len(str(card).encode("utf-8")))])
    where = f"{constants.ENDPOINT}/{repo_id}"
    out(
        f"{'would upload' if dry_run else 'uploading'} {len(plan.files)} file(s), "
        f"{tqdm.format_sizeof(plan.total_bytes, 'B', 1024)} ({plan.total_bytes} bytes) to {where} "
        f"({'public' if public else 'private'}); loads as: {plan.kind}; licence {lineage.license.describe()}"
    )
    for rel, size in plan.files:
        out(f"  {size:>14}  {rel}" + ("  (card generated at upload)" if rel == "README.md" and card else ""))
    for rel, why in plan.skipped:
        out(f"  not uploaded: {rel} ({why})")
    result = {"repo_id": repo_id, "endpoint": constants.ENDPOINT, "private": not public, "uploaded": False}
    result["files"] = [rel for rel, _ in plan.files]
    if dry_run:
        out("dry run: nothing was uploaded.")
        return result
    if hub_offline():
        raise UserError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it (--dry-run works offline).")
    token = get_token()
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then publish again.")
    if card is not None:
        out(f"wrote {write_card(model_dir, card)}")
    api = HfApi(endpoint=constants.ENDPOINT, token=token)
    step, commit = "create", None
    try:
        api.create_repo(repo_id, repo_type="model", private=not public, exist_ok=True)
        private = api.repo_info(repo_id, repo_type="model").private
        if private is False and not public:
            raise UserError(
                f"{where} already exists and is public; nothing was uploaded. Pass --public to publish to it, "
                "or choose another --repo."
            )
        if private and public:
            out(f"note: {where} exists and is private; --public does not change an existing repo's visibility")
        operations = [
            CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(model_dir / rel)) for rel, _ in plan.files
        ]
        step = "upload"  # large files first, then the commit: a failure can say whether a commit was made
        api.preupload_lfs_files(repo_id, additions=operations, repo_type="model")
        step = "commit"
        message = commit_message or f"Upload {model_dir.resolve().name} with smaug release publish"
        commit = api.create_commit(repo_id, operations=operations, repo_type="model", commit_message=message)
        step = "verify"
        extra = _verify_remote(api, repo_id, plan, operations)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - network failures become one line; anything else is a bug
        failure = network_failure(err)
        if failure is None:
            raise
        raise UserError(_failure_message(where, step, failure, commit, len(plan.files))) from err
    out(f"published {where} at commit {commit.oid}; remote files, sizes and hashes match the local folder")
    if extra:
        out(f"note: the repo also holds files not in this folder (left untouched): {', '.join(extra)}")
    return {**result, "uploaded": True, "commit": commit.oid, "extra_remote": extra}


def _failure_message(where: str, step: str, failure: BaseException, commit, n_files: int) -> str:
    """One line: what failed, what is and is not on the Hub now, and that rerunning is safe."""
    from huggingface_hub.errors import HfHubHTTPError

    answered = isinstance(failure, HfHubHTTPError)  # the Hub answered with an error status
    # The client's messages carry URLs and server text, never the Authorization header.
    detail = " ".join(str(failure).split()) or type(failure).__name__
    what = f"Hub request failed: {detail}" if answered else f"network failure ({type(failure).__name__}: {detail})"
    state = {
        "create": "nothing was uploaded",
        "upload": f"no commit was made, so the repo holds none of the {n_files} file(s) (large files that reached "
        "the Hub's storage are reused, not sent again)",
        "commit": f"the Hub refused the commit, so the repo holds none of the {n_files} file(s)"
        if answered
        else "the commit request got no answer, so the commit may or may not have been made",
        "verify": f"commit {getattr(commit, 'oid', '?')} was made with all {n_files} file(s), but they could not be "
        "checked against the local folder",
    }[step]
    return (
        f"{where}: {what}; {state}. Rerunning `smaug release publish` is safe: files already on the Hub are "
        "skipped, no empty commit is made, and the upload is checked again."
    )
