"""A small Hugging Face Hub API server on 127.0.0.1, for tests over real HTTP.

It implements the part of the Hub API that ``huggingface_hub`` and ``transformers`` call when they
publish and load a checkpoint, and nothing more:

=========================================================  =========================================
``POST /api/repos/create``                                  create a repo (409 if it exists)
``POST /api/validate-yaml``                                 README metadata check (always accepted)
``GET  /api/{type}s/{repo}[/revision/{rev}]``               repo info: ``sha`` of the revision, files
``GET  /api/{type}s/{repo}/refs``                           branches and tags
``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``            file listing (``?recursive=true``)
``POST /api/{type}s/{repo}/preupload/{rev}``                every file answered ``"regular"``
``POST /api/{type}s/{repo}/commit/{rev}``                   NDJSON body, base64 file contents
``POST /api/{type}s/{repo}/branch/{branch}``                create a branch
``POST /api/{type}s/{repo}/tag/{rev}``                      create a tag
``HEAD|GET /[{type}s/]{repo}/resolve/{rev}/{path}``          file bytes + ETag, X-Repo-Commit
=========================================================  =========================================

Answering ``"regular"`` to preupload keeps every upload inside the commit request (base64 in NDJSON),
so the client never takes the LFS or Xet upload paths. Errors carry the ``X-Error-Code`` header
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) that ``huggingface_hub`` maps to its
exception classes.

Storage is in memory. A commit is a full snapshot of the tree (path -> bytes) with a parent, and
its id is a 40-hex SHA-1 over the parent id, the message and the file blobs, as in git. Branches
and tags map names to commit ids; a revision is a branch, a tag or a full commit id.

Faults for tests: ``server.state.inject_fault("commit")`` makes the next commit request read its
body and then drop the connection without answering and without applying anything (the client sees
a disconnect); ``inject_fault("commit", status=500)`` answers an HTTP 500 instead.

Every request is appended to ``server.state.requests`` as ``(method, path)``, so a test can assert
that something made no request at all.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

_REPO_TYPES = ("model", "dataset")


def git_blob_id(content: bytes) -> str:
    """The git blob id of ``content`` (SHA-1 over ``"blob <size>\\0" + content``), as the Hub reports it."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]  # full snapshot of the tree at this commit
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision) or self.tags.get(revision) or revision
        return self.commits.get(oid)

    def add_commit(self, branch: str, message: str, files: dict[str, bytes]) -> Commit:
        parent = self.branches.get(branch)
        digest = hashlib.sha1(f"{parent}\n{message}\n{time.time_ns()}\n".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_id(files[path])}\n".encode())
        commit = Commit(oid=digest.hexdigest(), parent=parent, message=message, files=dict(files))
        self.commits[commit.oid] = commit
        self.branches[branch] = commit.oid
        return commit


class HubError(Exception):
    """An HTTP error answer: status, ``X-Error-Code`` header and message."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, **body
    ):
        super().__init__(message)
        self.status, self.code, self.headers, self.body = status, code, headers or {}, body


class HubState:
    """Repositories plus test hooks (injected faults, request log). Guarded by one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.faults: dict[str, int | None] = {}  # endpoint -> HTTP status, or None to drop the connection
        self.requests: list[tuple[str, str]] = []

    def inject_fault(self, endpoint: str, status: int | None = None) -> None:
        """Make the next request to ``endpoint`` ("commit") fail: dropped connection, or ``status``."""
        self.faults[endpoint] = status

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def commit(self, repo_type: str, repo_id: str, revision: str) -> tuple[Repo, Commit]:
        repo = self.repo(repo_type, repo_id)
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo, commit


# /api/models/org/name/<action>/<rest>; the repo id is always two segments (namespace/name).
_API_REPO = re.compile(
    r"^/api/(?P<type>models|datasets)/(?P<repo>[^/]+/[^/]+)(?:/(?P<action>[a-z-]+)(?:/(?P<rest>.*))?)?$"
)
_RESOLVE = re.compile(r"^/(?:(?P<type>datasets)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class HubRequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the clients pool connections
    server: _ThreadingServer

    # ----------------------------------------------------------------- plumbing
    def log_message(self, format, *args):
        pass

    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def base_url(self) -> str:
        return f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]  # each chunk ends with CRLF
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(
        self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"
    ):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _dispatch(self):
        path, _, query = self.path.partition("?")
        path = urllib.parse.unquote(path)
        params = dict(urllib.parse.parse_qsl(query))
        body = self._read_body() if self.command in ("POST", "PUT") else b""
        with self.state.lock:
            self.state.requests.append((self.command, path))
        try:
            with self.state.lock:
                self._route(path, params, body)
        except HubError as err:
            headers = {"X-Error-Message": str(err), **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json({"error": str(err), **err.body}, err.status, headers)

    do_GET = do_HEAD = do_POST = do_DELETE = _dispatch

    # ----------------------------------------------------------------- routes
    def _route(self, path: str, params: dict, body: bytes):
        if path == "/api/repos/create" and self.command == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if path == "/api/validate-yaml" and self.command == "POST":
            return self._json({"errors": [], "warnings": []})
        if (match := _RESOLVE.match(path)) and self.command in ("GET", "HEAD"):
            repo_type = "dataset" if match["type"] else "model"
            return self._resolve(repo_type, match["repo"], match["rev"], match["path"])
        if match := _API_REPO.match(path):
            repo_type, repo_id, action, rest = (
                match["type"][:-1],
                match["repo"],
                match["action"],
                match["rest"],
            )
            route = (self.command, action)
            if route in (("GET", None), ("GET", "revision")):
                return self._repo_info(repo_type, repo_id, rest or "main")
            if route == ("GET", "refs"):
                return self._refs(repo_type, repo_id)
            if route == ("GET", "tree"):
                rev, _, subpath = (rest or "main").partition("/")
                return self._tree(
                    repo_type, repo_id, rev, subpath, params.get("recursive") in ("true", "True", "1")
                )
            if route == ("POST", "preupload"):
                return self._preupload(repo_type, repo_id, rest or "main", json.loads(body))
            if route == ("POST", "commit"):
                return self._commit(repo_type, repo_id, rest or "main", body, params)
            if route == ("POST", "branch"):
                return self._create_branch(repo_type, repo_id, rest, json.loads(body or b"{}"))
            if route == ("POST", "tag"):
                return self._create_tag(repo_type, repo_id, rest, json.loads(body or b"{}"))
        raise HubError(404, f"{self.command} {path} is not implemented by the test Hub server")

    def _create_repo(self, payload: dict):
        repo_type = payload.get("type") or "model"
        if repo_type not in _REPO_TYPES:
            raise HubError(400, f"repo type {repo_type!r} is not supported by the test Hub server")
        repo_id = (
            f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        )
        if "/" not in repo_id:
            repo_id = f"user/{repo_id}"  # there is no login: the "current user" is called "user"
        prefix = "" if repo_type == "model" else "datasets/"
        url = f"{self.base_url}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.state.repos:
            raise HubError(
                409, f"You already created this {repo_type} repo: {url}", url=url
            )  # clients read "url"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(repo_id=repo_id, repo_type=repo_type, private=private)
        # Like the real Hub, a new repo starts with one commit holding a .gitattributes file.
        repo.add_commit(
            "main",
            "initial commit",
            {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
        )
        self.state.repos[(repo_type, repo_id)] = repo
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str):
        repo, commit = self.state.commit(repo_type, repo_id, revision)
        self._json(
            {
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "private": repo.private,
                "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
                "tags": [],
                "downloads": 0,
                "likes": 0,
            }
        )

    def _refs(self, repo_type: str, repo_id: str):
        repo = self.state.repo(repo_type, repo_id)

        def refs(names: dict[str, str], kind: str):
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid} for n, oid in names.items()]

        self._json(
            {"branches": refs(repo.branches, "heads"), "tags": refs(repo.tags, "tags"), "converts": []}
        )

    def _tree(self, repo_type: str, repo_id: str, revision: str, subpath: str, recursive: bool):
        _, commit = self.state.commit(repo_type, repo_id, revision)
        prefix = f"{subpath.strip('/')}/" if subpath.strip("/") else ""
        entries: dict[str, dict] = {}
        for path, content in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            # Folders between `subpath` and the file (all of them when recursive, else the first only).
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": "0" * 40, "size": 0})
            if recursive or len(parts) == 1:
                entries[path] = {
                    "type": "file",
                    "path": path,
                    "oid": git_blob_id(content),
                    "size": len(content),
                }
        if prefix and not entries:
            raise HubError(404, f"{subpath} does not exist at {revision}", "EntryNotFound")
        self._json(list(entries.values()))

    def _preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict):
        repo = self.state.repo(repo_type, repo_id)
        existing = (repo.resolve(revision) or Commit("", None, "", {})).files
        files = []
        for item in payload["files"]:
            content = existing.get(item["path"])
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",  # never LFS/Xet: contents travel base64 inside the commit
                    "shouldIgnore": False,
                    "oid": git_blob_id(content) if content is not None else None,
                }
            )
        self._json({"files": files})

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes, params: dict):
        if "commit" in self.state.faults:
            status = self.state.faults.pop("commit")
            if status is None:  # drop: close the socket without an answer and without applying anything
                self.close_connection = True
                return
            raise HubError(status, "injected failure: the server dropped this commit")
        if params.get("create_pr"):
            raise HubError(400, "pull requests are not supported by the test Hub server")
        repo = self.state.repo(repo_type, repo_id)
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision} is not a branch", "RevisionNotFound")
        files = dict(repo.resolve(revision).files)
        message = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value["summary"] + (
                    "\n\n" + value["description"] if value.get("description") else ""
                )
                parent = value.get("parentCommit")
                if parent and not repo.branches[revision].startswith(parent):
                    raise HubError(412, f"parent commit {parent} is not the head of {revision}")
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(422, f"file {value['path']}: only base64 encoding is supported")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(
                        404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound"
                    )
                del files[value["path"]]
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(folder)}
            else:  # "lfsFile" cannot happen: preupload always answers "regular"
                raise HubError(422, f"commit operation {key!r} is not supported by the test Hub server")
        commit = repo.add_commit(revision, message, files)
        prefix = "" if repo_type == "model" else "datasets/"
        self._json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.base_url}/{prefix}{repo_id}/commit/{commit.oid}",
                "pullRequestUrl": None,
            }
        )

    def _create_branch(self, repo_type: str, repo_id: str, branch: str, payload: dict):
        repo = self.state.repo(repo_type, repo_id)
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = repo.resolve(payload.get("startingPoint") or "main")
        if start is None:
            raise HubError(404, f"Invalid rev id: {payload.get('startingPoint')}", "RevisionNotFound")
        repo.branches[branch] = start.oid
        self._json({})

    def _create_tag(self, repo_type: str, repo_id: str, revision: str, payload: dict):
        repo, commit = self.state.commit(repo_type, repo_id, revision or "main")
        if payload["tag"] in repo.tags:
            raise HubError(409, f"Reference already exists: refs/tags/{payload['tag']}")
        repo.tags[payload["tag"]] = commit.oid
        self._json({})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str):
        _, commit = self.state.commit(repo_type, repo_id, revision)
        headers = {"X-Repo-Commit": commit.oid}
        content = commit.files.get(path)
        if content is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers)
        headers["ETag"] = f'"{git_blob_id(content)}"'
        status, body = 200, content
        if range_match := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
            start = int(range_match[1])
            end = int(range_match[2]) if range_match[2] else len(content) - 1
            status, body = 206, content[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        self._send(status, body, headers, content_type="application/octet-stream")


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    state: HubState


class HubServer:
    """The loopback Hub server: ``with HubServer() as hub: ...`` or ``start()``/``stop()``.

    ``url`` is the endpoint to put in ``HF_ENDPOINT``; ``port=0`` picks a free port.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._httpd = _ThreadingServer((host, port), HubRequestHandler)
        self._httpd.state = HubState()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)

    @property
    def state(self) -> HubState:
        return self._httpd.state

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:  # noqa: PYI034 - start() returns self
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":  # `python tests/hub_server.py 8765` serves until Ctrl-C (manual debugging)
    import sys

    server = HubServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(f"serving the test Hub API on {server.url}", flush=True)
    server._httpd.serve_forever()
