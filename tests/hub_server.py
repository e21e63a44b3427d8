"""A tiny stand-in for the Hugging Face Hub HTTP API, for tests only.

It implements just what the real `huggingface_hub` 1.17 client sends for create_repo, create_commit /
upload_folder (README metadata check, preupload, LFS batch + basic PUT upload + verify, NDJSON commit),
repo_info/model_info, list_repo_tree, get_paths_info and file download (resolve). Requests were read off
huggingface_hub's own source (hf_api.py, _commit_api.py, lfs.py, file_download.py). Dataset repos take the same
routes under `/api/datasets/`, `/datasets/<id>.git/` and `/datasets/<id>/resolve/`, which is what `datasets`'
`push_to_hub` uses (with `HfFileSystem` reading the repo at a commit id, which is accepted as a revision); they
are stored under the key `datasets/<id>`, model repos under `<id>`.

It checks the Authorization header on every API call; LFS uploads go to a presigned-style URL (no auth
header, like S3) whose signature it checks. It always answers the LFS batch with the `basic` transfer, so
the client never takes the xet path. It proves the client protocol works end to end; it proves nothing
about the real Hub's validation, permissions, storage or limits (see model_cards/README.md).

Failure injection: `HubState.faults` maps a handler name (`lfs_put`, `commit`, `tree`, ...) to how many of
its next requests get no answer at all (the connection is closed), which the client reports as
`httpx.RemoteProtocolError`; a test in another process sets it with `POST /_test/faults {"commit": 1}`.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# The Hub stores these through LFS (a subset of its default .gitattributes), plus anything over 10 MB.
LFS_PATTERNS = [
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.pkl",
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.gguf",
    "*.model",
    "*.npy",
    "*.zip",
    "*.tar",
    "*tfevents*",
    "*.parquet",
    "*.arrow",
]
LFS_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "path": path, "size": len(self.content)}
        if self.lfs:
            pointer = lfs_pointer(self.sha256, len(self.content))
            entry.update(
                oid=git_blob_id(pointer),
                lfs={"oid": self.sha256, "size": len(self.content), "pointerSize": len(pointer)},
            )
        else:
            entry["oid"] = git_blob_id(self.content)
        return entry

    def preupload_oid(self) -> str:
        # What the client compares with its own `_local_oid`: sha256 for LFS, git sha1 for regular files.
        return self.sha256 if self.lfs else git_blob_id(self.content)


@dataclass
class Repo:
    repo_id: str
    private: bool
    repo_type: str = "model"
    files: dict[str, StoredFile] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"]

    def has_revision(self, rev: str) -> bool:
        return rev == "main" or any(c["oid"] == rev for c in self.commits)

    def commit(self, title: str, files: dict[str, StoredFile], deleted: set[str]) -> str:
        for path in deleted:
            self.files.pop(path, None)
        self.files.update(files)
        state = json.dumps(sorted((p, f.preupload_oid()) for p, f in self.files.items()))
        parent = self.commits[-1]["oid"] if self.commits else ""
        oid = hashlib.sha1(f"{parent}\n{title}\n{state}\n{len(self.commits)}".encode()).hexdigest()
        self.commits.append({"oid": oid, "title": title, "paths": sorted(files) + sorted(deleted)})
        return oid


class HubState:
    def __init__(self, token: str, user: str):
        self.token, self.user = token, user
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[dict] = []  # method, path, authorized: what the client did (tests inspect this)
        self.upload_secret = secrets.token_hex(16)
        self.faults: dict[str, int] = {}  # handler name -> requests still to drop
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args):  # keep test output quiet
        pass

    # -- plumbing
    @property
    def state(self) -> HubState:
        return self.server.state

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        payload=None,
        *,
        headers: dict | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        self._send(status, {"error": message}, headers={"X-Error-Code": code} if code else None)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.state.token}"

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _repo(self, repo_id: str, need_auth: bool = True, kind: str | None = None) -> Repo | None:
        repo = self.state.repos.get(repo_key(repo_id, kind))
        if repo is None or (repo.private and not self._authorized()) or (need_auth and not self._authorized()):
            self._error(401 if not self._authorized() else 404, "Repository not found", "RepoNotFound")
            return None
        return repo

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        body = self._body() if self.command in ("POST", "PUT") else b""
        with self.state.lock:
            self.state.requests.append({"method": self.command, "path": path, "authorized": self._authorized()})
            for pattern, methods, handler in ROUTES:
                match = re.fullmatch(pattern, path)
                if match and self.command in methods:
                    if self.state.faults.get(handler.__name__, 0) > 0:
                        self.state.faults[handler.__name__] -= 1
                        self.close_connection = True  # no status line at all: the connection just closes
                        return None
                    if pattern.startswith("/api") and not self._authorized():
                        return self._error(401, "Invalid credentials in Authorization header")
                    return handler(self, query=query, body=body, **match.groupdict())
        self._error(404, f"no route for {self.command} {path}")

    do_GET = do_POST = do_PUT = do_HEAD = _dispatch

    # -- API
    def whoami(self, **_):
        self._send(200, {"type": "user", "name": self.state.user, "auth": {"type": "access_token"}})

    def create_repo(self, body, **_):
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        if repo_type not in ("model", "dataset"):
            return self._error(400, "this test server only hosts model and dataset repos")
        repo_id = f"{payload.get('organization') or self.state.user}/{payload['name']}"
        kind = "datasets" if repo_type == "dataset" else "models"
        url = f"{self._base()}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
        if repo_key(repo_id, kind) in self.state.repos:
            return self._send(409, {"error": f"You already created this {repo_type} repo", "url": url})
        repo = Repo(repo_id, private=payload.get("visibility", "public") == "private", repo_type=repo_type)
        repo.commit("initial commit", {".gitattributes": StoredFile(GITATTRIBUTES, lfs=False)}, set())
        self.state.repos[repo_key(repo_id, kind)] = repo
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, body, **_):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---", content, re.S)
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as err:
            return self._send(400, {"errors": [{"message": f"invalid YAML: {err}"}]})
        if not isinstance(meta, dict):
            return self._send(400, {"errors": [{"message": "metadata must be a mapping"}]})
        self._send(200, {"errors": [], "warnings": []})

    def repo_info(self, ns, name, rev="main", kind=None, **_):
        repo = self._repo(f"{ns}/{name}", kind=kind)
        if repo is None:
            return
        if not repo.has_revision(rev):
            return self._error(404, "Revision not found", "RevisionNotFound")
        sha = repo.head if rev == "main" else rev
        self._send(
            200,
            {
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": sha,
                "private": repo.private,
                "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                "tags": [],
            },
        )

    def preupload(self, ns, name, rev, body, kind=None, **_):
        repo = self._repo(f"{ns}/{name}", kind=kind)
        if repo is None:
            return
        files = []
        for item in json.loads(body)["files"]:
            lfs = item["size"] > LFS_SIZE or any(fnmatch.fnmatch(item["path"].split("/")[-1], p) for p in LFS_PATTERNS)
            existing = repo.files.get(item["path"])
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": existing.preupload_oid() if existing and existing.lfs == lfs else None,
                }
            )
        self._send(200, {"files": files, "commitOid": repo.head})

    def lfs_batch(self, ns, name, body, prefix=None, **_):
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        repo = self._repo(f"{ns}/{name}", kind="datasets" if prefix else None)
        if repo is None:
            return
        payload = json.loads(body)
        objects = []
        for obj in payload["objects"]:
            out = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs_objects:  # already stored -> no actions, the client skips it
                sig = hashlib.sha256(f"{self.state.upload_secret}:{obj['oid']}".encode()).hexdigest()
                out["actions"] = {
                    "upload": {"href": f"{self._base()}/_lfs/{obj['oid']}?size={obj['size']}&sig={sig}"},
                    "verify": {"href": f"{self._base()}/_lfs/{obj['oid']}/verify"},
                }
            objects.append(out)
        # Always `basic`: the client then uploads with a plain PUT and never takes the xet path.
        self._send(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def lfs_put(self, oid, query, body, **_):
        sig = hashlib.sha256(f"{self.state.upload_secret}:{oid}".encode()).hexdigest()
        if query.get("sig") != [sig]:
            return self._error(403, "bad upload signature")
        if hashlib.sha256(body).hexdigest() != oid or str(len(body)) != query.get("size", [""])[0]:
            return self._error(400, "uploaded content does not match its oid/size")
        self.state.lfs_objects[oid] = body
        self._send(200, raw=b"", content_type="text/plain")

    def lfs_verify(self, oid, body, **_):
        if not self._authorized():
            return self._error(401, "Invalid credentials in Authorization header")
        stored = self.state.lfs_objects.get(oid)
        if stored is None or len(stored) != json.loads(body)["size"]:
            return self._error(404, "object not uploaded")
        self._send(200, {"ok": True})

    def commit(self, ns, name, rev, body, kind=None, **_):
        repo = self._repo(f"{ns}/{name}", kind=kind)
        if repo is None:
            return
        if rev != "main":
            return self._error(404, "Revision not found", "RevisionNotFound")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._error(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != repo.head:
            return self._error(412, "parent commit is not the head of the branch")
        added, deleted = {}, set()
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                added[value["path"]] = StoredFile(base64.b64decode(value["content"]), lfs=False)
            elif line["key"] == "lfsFile":
                content = self.state.lfs_objects.get(value["oid"])
                if content is None or ("size" in value and len(content) != value["size"]):
                    return self._error(400, f"LFS object for {value['path']} was not uploaded")
                added[value["path"]] = StoredFile(content, lfs=True)
            elif line["key"] in ("deletedFile", "deletedFolder"):
                deleted.add(value["path"])
            else:
                return self._error(400, f"unknown commit operation {line['key']}")
        oid = repo.commit(header["summary"], added, deleted)
        self._send(
            200,
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self._base()}/{repo.repo_id}/commit/{oid}",
                "hookOutput": "",
                "pullRequestUrl": None,
            },
        )

    def tree(self, ns, name, rev, query, sub=None, kind=None, **_):
        repo = self._repo(f"{ns}/{name}", kind=kind)
        if repo is None:
            return
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        prefix = f"{sub.strip('/')}/" if sub else ""
        entries, dirs = [], set()
        for path in sorted(repo.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):
                if depth == 1 or recursive:
                    dirs.add(prefix + "/".join(rest[:depth]))
            if len(rest) == 1 or recursive:
                entries.append(repo.files[path].tree_entry(path))
        if prefix and not entries and not dirs:  # as the Hub: a folder that does not exist is an error
            return self._error(404, f"{sub} does not exist", "EntryNotFound")
        folders = [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()} for d in sorted(dirs)]
        self._send(200, folders + entries)

    def paths_info(self, ns, name, rev, body, kind=None, **_):
        repo = self._repo(f"{ns}/{name}", kind=kind)
        if repo is None:
            return
        form = parse_qs(body.decode())
        self._send(200, [repo.files[p].tree_entry(p) for p in form.get("paths", []) if p in repo.files])

    def set_faults(self, body, **_):
        self.state.faults.update({name: int(count) for name, count in json.loads(body).items()})
        self._send(200, self.state.faults)

    def resolve(self, ns, name, rev, filename, prefix=None, **_):
        repo = self.state.repos.get(repo_key(f"{ns}/{name}", "datasets" if prefix else None))
        if repo is None or (repo.private and not self._authorized()):
            return self._error(401 if not self._authorized() else 404, "Repository not found", "RepoNotFound")
        stored = repo.files.get(filename)
        if stored is None:
            return self._error(404, "Entry not found", "EntryNotFound")
        etag = f'"{stored.preupload_oid()}"'
        headers = {"X-Repo-Commit": repo.head, "ETag": etag}
        if stored.lfs:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(len(stored.content))})
        self._send(200, raw=stored.content, headers=headers, content_type="application/octet-stream")


def repo_key(repo_id: str, kind: str | None) -> str:
    """Where a repo is stored in `HubState.repos`: `<id>` for a model, `datasets/<id>` for a dataset."""
    return f"datasets/{repo_id}" if kind == "datasets" else repo_id


_REPO = r"(?P<ns>[\w.-]+)/(?P<name>[\w.-]+)"
_KIND = r"(?P<kind>models|datasets)"
_PREFIX = r"(?P<prefix>datasets/)?"
ROUTES = [
    (r"/api/whoami-v2", {"GET"}, _Handler.whoami),
    (r"/api/repos/create", {"POST"}, _Handler.create_repo),
    (r"/api/validate-yaml", {"POST"}, _Handler.validate_yaml),
    (rf"/api/{_KIND}/{_REPO}", {"GET"}, _Handler.repo_info),
    (rf"/api/{_KIND}/{_REPO}/revision/(?P<rev>[^/]+)", {"GET"}, _Handler.repo_info),
    (rf"/api/{_KIND}/{_REPO}/preupload/(?P<rev>[^/]+)", {"POST"}, _Handler.preupload),
    (rf"/api/{_KIND}/{_REPO}/commit/(?P<rev>[^/]+)", {"POST"}, _Handler.commit),
    (rf"/api/{_KIND}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.+))?", {"GET"}, _Handler.tree),
    (rf"/api/{_KIND}/{_REPO}/paths-info/(?P<rev>[^/]+)", {"POST"}, _Handler.paths_info),
    (rf"/{_PREFIX}{_REPO}\.git/info/lfs/objects/batch", {"POST"}, _Handler.lfs_batch),
    (r"/_lfs/(?P<oid>[0-9a-f]{64})", {"PUT"}, _Handler.lfs_put),
    (r"/_lfs/(?P<oid>[0-9a-f]{64})/verify", {"POST"}, _Handler.lfs_verify),
    (rf"/{_PREFIX}{_REPO}/resolve/(?P<rev>[^/]+)/(?P<filename>.+)", {"GET", "HEAD"}, _Handler.resolve),
    (r"/_test/faults", {"POST"}, _Handler.set_faults),
]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState


class HubServer:
    """``with HubServer(token) as hub: ... hub.url ...`` — serves on 127.0.0.1, a random free port."""

    def __init__(self, token: str, user: str = "smaug-tester"):
        self.state = HubState(token, user)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
