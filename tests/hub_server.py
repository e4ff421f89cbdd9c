"""A loopback HTTP server that speaks the Hugging Face hub's file protocol, for rehearsals with the real
huggingface_hub client (point it at the server with ``HF_ENDPOINT=<server.url>``).

It serves a folder: ``<root>/models/<org>/<name>/...`` and ``<root>/datasets/<org>/<name>/...``, each
folder one repository at one revision (its commit id is a hash of the files). What the client asks:

- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` and ``/datasets/{repo}/resolve/{rev}/{path}``:
  ``ETag``, ``X-Repo-Commit``, ``X-Linked-Size``/``Content-Length``; ``Range: bytes=N-`` answered 206
  (resumed downloads); a missing file or repository is 404 with the ``X-Error-Code`` the client maps
  to ``EntryNotFoundError`` / ``RepositoryNotFoundError``;
- ``GET /api/{models,datasets}/{repo}/revision/{rev}``: the repository's sha and ``siblings``
  (``snapshot_download``'s first call);
- ``GET /api/{models,datasets}/{repo}/tree/{rev}[/{path}]``: the file listing (``recursive`` honoured).

``server.requests`` logs every request as ``(method, path)`` (query string dropped), ``server.ranges`` the
``Range`` headers received. Fault injection: ``server.drop(path_suffix, after_bytes)`` closes the
connection once ``after_bytes`` bytes of any file whose repository path ends with ``path_suffix`` have been
sent, on every request until ``server.drop(None)``. Used as a context manager it listens on
``127.0.0.1`` port 0 in a thread.
"""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

KINDS = {"models": "models", "datasets": "datasets"}


class HubServer:
    """The server over ``root``; ``url`` once started."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests: list[tuple[str, str]] = []
        self.ranges: list[str] = []
        self._drop: tuple[str, int] | None = None
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._http is not None, "start the server first (with HubServer(root) as server: ...)"
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def drop(self, path_suffix: str | None, after_bytes: int = 0) -> None:
        """Close the connection after ``after_bytes`` bytes of matching files (None: stop dropping)."""
        self._drop = None if path_suffix is None else (path_suffix, after_bytes)

    def downloads(self) -> list[str]:
        """The paths of the file bodies requested (``GET .../resolve/...``)."""
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]

    def __enter__(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._http is not None
        self._http.shutdown()
        self._http.server_close()

    # ---- repositories ---------------------------------------------------------------------------

    def repo_dir(self, kind: str, repo: str) -> Path | None:
        folder = self.root / kind / repo
        return folder if repo.count("/") == 1 and folder.is_dir() and ".." not in repo else None

    @staticmethod
    def files(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file())

    def commit(self, folder: Path) -> str:
        digest = hashlib.sha1()
        for path in self.files(folder):
            digest.update(f"{path.relative_to(folder)}\0{file_hash(path)}\0".encode())
        return digest.hexdigest()


_HASHES: dict[tuple[str, int, int], str] = {}


def file_hash(path: Path) -> str:
    """SHA-256 of a file, remembered by (path, size, mtime): weights of hundreds of MB are hashed once."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        self.hub.requests.append((self.command, path))
        if self.headers.get("Range"):
            self.hub.ranges.append(self.headers["Range"])
        if path.startswith("/api/"):
            return self._api(path[len("/api/"):], parse_qs(parts.query), body)
        kind = "models"
        if path.startswith("/datasets/"):
            kind, path = "datasets", path[len("/datasets"):]
        segments = path.strip("/").split("/")
        if len(segments) < 5 or segments[2] != "resolve":
            return self._error(404, "RepoNotFound", f"not a hub route: {path}")
        return self._file(kind, "/".join(segments[:2]), "/".join(segments[4:]), body)

    # ---- files ----------------------------------------------------------------------------------

    def _file(self, kind: str, repo: str, filename: str, body: bool) -> None:
        folder = self.hub.repo_dir(kind, repo)
        if folder is None:
            return self._error(404, "RepoNotFound", f"repository {repo} not found")
        commit = self.hub.commit(folder)
        path = folder / filename
        if not filename or not path.is_file() or ".." in filename:
            return self._error(404, "EntryNotFound", f"{filename} not in {repo}", commit)
        size = path.stat().st_size
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=") and ranged[6:].split("-")[0].isdigit():
            start = min(int(ranged[6:].split("-")[0]), size)
        self.send_response(206 if start else 200)
        self.send_header("ETag", f'"{file_hash(path)}"')
        self.send_header("X-Repo-Commit", commit)
        self.send_header("X-Linked-Size", str(size))
        self.send_header("Content-Length", str(size - start))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        if not body:
            return
        drop = self.hub._drop
        end = max(start, drop[1]) if drop is not None and f"{repo}/{filename}".endswith(drop[0]) else size
        with path.open("rb") as f:
            f.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = f.read(min(remaining, 1 << 20))
                self.wfile.write(chunk)
                remaining -= len(chunk)
        if end < size:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # the client sees the stream end before Content-Length

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        payload = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    # ---- api ------------------------------------------------------------------------------------

    def _api(self, path: str, query: dict, body: bool) -> None:
        parts = path.strip("/").split("/")
        if len(parts) < 5 or parts[0] not in KINDS or parts[3] not in ("revision", "tree"):
            return self._error(404, "RepoNotFound", f"unknown api route {path}")
        kind, repo, what = KINDS[parts[0]], f"{parts[1]}/{parts[2]}", parts[3]
        folder = self.hub.repo_dir(kind, repo)
        if folder is None:
            return self._error(404, "RepoNotFound", f"repository {repo} not found")
        commit = self.hub.commit(folder)
        files = [p.relative_to(folder).as_posix() for p in self.hub.files(folder)]
        if what == "revision":
            info = {"id": repo, "sha": commit, "siblings": [{"rfilename": f} for f in files], "private": False}
            return self._json(info, commit, body)
        under = "/".join(parts[5:])
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, folders = [], set()
        for name in files:
            if under and not name.startswith(under + "/"):
                continue
            rest = name[len(under) + 1:] if under else name
            if "/" in rest and not recursive:
                folders.add(f"{under}/{rest.split('/')[0]}" if under else rest.split("/")[0])
                continue
            path_ = folder / name
            entries.append({"type": "file", "path": name, "size": path_.stat().st_size,
                            "oid": file_hash(path_)[:40]})
            if recursive:
                for i in range(1, name.count("/") + 1):
                    folders.add("/".join(name.split("/")[:i]))
        listing = [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()}
                   for f in sorted(folders)] + entries
        return self._json(listing, commit, body)

    def _json(self, payload, commit: str, body: bool) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


def go_online(monkeypatch, server: HubServer, hub_cache: Path) -> None:
    """Point huggingface_hub, already imported in this process, at ``server`` with an empty cache, online
    (the test suite runs with ``HF_HUB_OFFLINE=1``; a subprocess gets the same through its environment)."""
    from huggingface_hub import constants

    for name, value in hub_environment(server, hub_cache).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))


def hub_environment(server: HubServer, hub_cache: Path) -> dict[str, str]:
    """The environment of a process that reads the hub from ``server`` into ``hub_cache``."""
    return {"HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(hub_cache), "HF_HOME": str(Path(hub_cache).parent / "hf_home"),
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
