"""A small Hugging Face Hub on 127.0.0.1 for the tests: it serves model and dataset repos over the HTTP API that
`huggingface_hub` (and through it transformers, peft and datasets) calls, so a test points HF_ENDPOINT at it and
runs grads as a user would, with no mock of grads' own functions and nothing reaching a real hub.

Endpoints, as the hub answers them:
- `HEAD|GET /{repo}/resolve/{rev}/{file}` and `/datasets/{repo}/resolve/{rev}/{file}`: the file, with the headers
  `hf_hub_download` reads (`X-Repo-Commit`, `ETag`, `X-Linked-Etag`, `Content-Length`); a missing file is a 404
  with `X-Error-Code: EntryNotFound` (and the commit, so the cache records the file as absent);
- `GET /api/{models|datasets}/{repo}[/revision/{rev}]`: the repo's info (`sha`, `siblings`);
- `GET /api/{models|datasets}/{repo}/tree/{rev}[/{folder}]` (`?recursive=`): the files and folders below;
- `POST /api/{models|datasets}/{repo}/paths-info/{rev}`: the entries of the paths asked for.
A repo created with `token=` is gated: a request without `Authorization: Bearer TOKEN` gets 401 `GatedRepo`.
Unknown repos get 404 `RepoNotFound`, unknown revisions 404 `RevisionNotFound`; every request is logged in
`requests` (method, path, whether it carried the token) for the tests to check.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str  # the commit `main` points at (40 hex digits)
    token: str | None = None  # gated: only this bearer token may read it

    @classmethod
    def from_folder(cls, folder: Path, token: str | None = None) -> Repo:
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        digest = hashlib.sha1(b"".join(name.encode() + data for name, data in files.items())).hexdigest()
        return cls(files, digest, token)

    def folders(self) -> set[str]:
        return {str(parent) for name in self.files for parent in Path(name).parents if str(parent) != "."}

    def entry(self, path: str) -> dict | None:
        """A tree entry as the hub lists it: a file (size, git oid, LFS sha256) or a folder."""
        if path in self.files:
            data = self.files[path]
            return {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest(),
                    "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}}
        if path in self.folders():
            return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()}
        return None

    def tree(self, folder: str, recursive: bool) -> list[dict]:
        names = sorted(set(self.files) | self.folders())
        prefix = f"{folder}/" if folder else ""
        below = [n for n in names if n.startswith(prefix)]
        if not recursive:
            below = [n for n in below if "/" not in n[len(prefix):]]
        return [self.entry(n) for n in below]


@dataclass
class HubServer:
    """`with HubServer({"models": {...}, "datasets": {...}}) as hub:` serves on `hub.url` until the block ends."""

    repos: dict[str, dict[str, Repo]]
    requests: list[tuple[str, str, bool]] = field(default_factory=list)

    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    server_hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: the tests read `requests`
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length) if length else b""
        self._answer(head=False)

    # -------------------------------------------------------------------------------------------- routing

    def _answer(self, head: bool) -> None:
        url = urllib.parse.urlsplit(self.path)
        path, query = urllib.parse.unquote(url.path), urllib.parse.parse_qs(url.query)
        parts = path.strip("/").split("/")
        auth = self.headers.get("Authorization", "")
        self.server_hub.requests.append((self.command, self.path, auth.startswith("Bearer ")))
        if parts[0] == "api" and len(parts) >= 4 and parts[1] in ("models", "datasets"):
            self._api(parts[1], "/".join(parts[2:4]), parts[4:], query)
        elif parts[0] == "datasets" and len(parts) >= 5 and parts[3] == "resolve":
            self._resolve("datasets", "/".join(parts[1:3]), parts[4], "/".join(parts[5:]), head)
        elif len(parts) >= 4 and parts[2] == "resolve":
            self._resolve("models", "/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
        else:
            self._error(404, "RepoNotFound", f"no route for {path}")

    def _repo(self, kind: str, repo_id: str, revision: str) -> Repo | None:
        """The repo, or None once an error has been answered (unknown repo or revision, refused token)."""
        repo = self.server_hub.repos.get(kind, {}).get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            return None
        if repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
            self._error(401, "GatedRepo", f"Access to {repo_id} is restricted: you must be authenticated")
            return None
        if revision not in ("main", repo.sha):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", repo)
            return None
        return repo

    def _api(self, kind: str, repo_id: str, rest: list[str], query: dict) -> None:
        if not rest or rest[0] == "revision":
            repo = self._repo(kind, repo_id, rest[1] if len(rest) > 1 else "main")
            if repo is not None:
                self._json({"id": repo_id, "sha": repo.sha, "private": False, "gated": repo.token and "auto",
                            "disabled": False, "lastModified": "2024-01-01T00:00:00.000Z", "tags": [],
                            "siblings": [{"rfilename": name, "size": len(data)}
                                         for name, data in sorted(repo.files.items())]}, repo)
        elif rest[0] == "tree" and len(rest) >= 2:
            repo = self._repo(kind, repo_id, rest[1])
            if repo is not None:
                folder = "/".join(rest[2:])
                if folder and folder not in repo.folders():
                    return self._error(404, "EntryNotFound", f"{folder} does not exist", repo)
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                self._json(repo.tree(folder, recursive), repo)
        elif rest[0] == "paths-info" and len(rest) >= 2:
            repo = self._repo(kind, repo_id, rest[1])
            if repo is not None:
                self._json([e for p in self._asked_paths() if (e := repo.entry(p.strip("/"))) is not None], repo)
        else:
            self._error(404, "RepoNotFound", f"no API route {'/'.join(rest)}")

    def _asked_paths(self) -> list[str]:
        body = getattr(self, "_body", b"")
        if self.headers.get("Content-Type", "").startswith("application/json"):
            return list(json.loads(body or b"{}").get("paths", []))
        return urllib.parse.parse_qs(body.decode()).get("paths", [])

    def _resolve(self, kind: str, repo_id: str, revision: str, filename: str, head: bool) -> None:
        repo = self._repo(kind, repo_id, revision)
        if repo is None:
            return
        if filename not in repo.files:
            return self._error(404, "EntryNotFound", f"{filename} does not exist on {revision}", repo)
        data = repo.files[filename]
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        self.send_response(200)
        for name, value in (("X-Repo-Commit", repo.sha), ("ETag", etag), ("X-Linked-Etag", etag),
                            ("X-Linked-Size", str(len(data))), ("Content-Length", str(len(data))),
                            ("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes")):
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    # -------------------------------------------------------------------------------------------- answers

    def _json(self, payload, repo: Repo | None = None) -> None:
        self._send(200, json.dumps(payload).encode(), {}, repo)

    def _error(self, status: int, code: str, message: str, repo: Repo | None = None) -> None:
        self._send(status, json.dumps({"error": message}).encode(),
                   {"X-Error-Code": code, "X-Error-Message": message}, repo)

    def _send(self, status: int, body: bytes, headers: dict[str, str], repo: Repo | None) -> None:
        """A JSON answer as the hub sends one: its headers, the repo's commit when there is one, no body to HEAD."""
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json", "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        if repo is not None:
            self.send_header("X-Repo-Commit", repo.sha)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
