"""A local stand-in for the Hugging Face Hub, and for a plain file server.

It answers exactly what huggingface_hub 2.4 asks for dataset repos:

- `GET /api/datasets/{repo}` and `GET /api/datasets/{repo}/revision/{rev}` (`HfApi.dataset_info`):
  JSON with `id`, `sha` (the commit the revision points to), `private`, `gated`, `siblings`.
- `GET /api/datasets/{repo}/tree/{rev}[/{path}]?recursive=&expand=[&cursor=]`
  (`HfApi.list_repo_tree` / `list_repo_files`): JSON entries `{"type": "file"|"directory",
  "oid", "size", "path"[, "lfs"]}`, paginated `page_size` entries at a time with a
  `Link: <next>; rel="next"` header, as the Hub does (1000 per page there).
- `HEAD`/`GET /datasets/{repo}/resolve/{rev}/{path}` (`hf_hub_download`): a regular file is
  answered 200 with `X-Repo-Commit`, `ETag` (git blob sha1) and `Content-Length`; an LFS file
  (Parquet by default) is answered `302` to a second server, the "CDN" (another origin, as on
  the Hub, so the client neither follows the redirect on HEAD nor sends it the token), with
  `X-Repo-Commit`, `X-Linked-Etag` (sha256) and `X-Linked-Size`. Both servers honour `Range`.

The revision in a URL is percent-encoded (`refs%2Fconvert%2Fparquet`) and may be a branch or a
commit sha. Errors carry the `X-Error-Code` the client maps to exceptions: `RepoNotFound`
(401 without a token, 404 with one, like the Hub; also for a private repo without a valid
token), `GatedRepo` (a gated repo's metadata and listing are public, its files need a token),
`RevisionNotFound`, `EntryNotFound`. A token other than `FakeHub.token`
is answered 401 "Invalid credentials in Authorization header".

Plain files for `fetch_url` live under `/files/{name}`, answered as a static file server does:
`ETag` (a hash of the content) and `Last-Modified` (each optional per file), `Range` (optional)
and `If-Range` (the range, 206, only while the validator sent is the file's current one; else
200 with the whole file). `FakeHub.change_file` gives a file new content (a new ETag, a
Last-Modified a minute later) between two requests; a file can be cut short to simulate an
interrupted transfer, or refuse HEAD (405).

Every request is logged in `.requests` as (method, path without query); `.log` has the
headers and the status answered too.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

MAIN = "main"


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    private: bool = False
    gated: bool = False
    refs: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> files

    def commit_of(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


FIRST_MODIFIED = 1_700_000_000  # Last-Modified of a file's first content (a Unix time)


@dataclass
class PlainFile:
    data: bytes
    ranges: bool = True  # answer Range requests with 206 (else ignore them: 200, whole body)
    cut_at: int | None = None  # send only this many bytes of the body, then close
    etag: bool = True  # send an ETag
    last_modified: bool = True  # send a Last-Modified date
    if_range: bool = True  # honour If-Range (else a broken server: the range even of a changed file)
    head: bool = True  # answer HEAD (else 405 Method Not Allowed)
    changes: int = 0  # how many times change_file gave it new content

    def validators(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["ETag"] = f'"{hashlib.sha256(self.data).hexdigest()[:32]}"'
        if self.last_modified:
            # HTTP dates have one-second resolution: a change is a minute later
            headers["Last-Modified"] = formatdate(FIRST_MODIFIED + 60 * self.changes, usegmt=True)
        return headers


class FakeHub:
    token = "hf_fake_token_for_tests"

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.files: dict[str, PlainFile] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> LFS content, served by the CDN
        self.requests: list[tuple[str, str]] = []
        self.log: list[dict] = []
        self.page_size = 1000
        self._lock = threading.Lock()
        self._hub = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, cdn=False))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, cdn=True))
        self._threads = [
            threading.Thread(
                target=server.serve_forever, daemon=True, kwargs={"poll_interval": 0.05}
            )
            for server in (self._hub, self._cdn)
        ]

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def start(self) -> FakeHub:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    # ---------------------------------------------------------------- content

    def add_dataset(
        self,
        repo_id: str,
        files: dict[str, bytes],
        revision: str = MAIN,
        *,
        private: bool = False,
        gated: bool = False,
    ) -> str:
        """Make `revision` (a branch) of dataset `repo_id` hold exactly `files`; returns its commit."""
        repo = self.repos.setdefault(repo_id, FakeRepo(repo_id))
        repo.private = repo.private or private
        repo.gated = repo.gated or gated
        digest = hashlib.sha1(f"{repo_id}\0{revision}\0{len(repo.commits)}".encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + files[path])
        sha = digest.hexdigest()
        repo.commits[sha] = dict(files)
        repo.refs[revision] = sha
        for path, data in files.items():
            if self.is_lfs(path):
                self.blobs[hashlib.sha256(data).hexdigest()] = data
        return sha

    def add_file(self, name: str, data: bytes, **options) -> str:
        """Serve `data` at /files/{name} (`options`: PlainFile's fields); returns its URL."""
        self.files[name] = PlainFile(data, **options)
        return f"{self.url}/files/{name}"

    def change_file(self, name: str, data: bytes) -> None:
        """Give /files/{name} new content, as an upload over it would: new ETag, later date."""
        file = self.files[name]
        with self._lock:
            file.data = data
            file.changes += 1

    def answered(self, path: str, method: str = "GET") -> list[dict]:
        """The log entries (headers sent, status answered) of `method` requests for `path`."""
        return [e for e in self.log if e["path"] == path and e["method"] == method]

    @staticmethod
    def is_lfs(path: str) -> bool:
        return path.endswith(".parquet")

    def hits(self, path: str, method: str | None = None) -> int:
        """How many requests asked for `path` (exact, as sent: percent-encoded, no query)."""
        return sum(1 for m, p in self.requests if p == path and (method is None or m == method))

    def _record(self, handler: BaseHTTPRequestHandler, server: str) -> dict:
        path = handler.path.split("?", 1)[0]
        entry = {
            "server": server,
            "method": handler.command,
            "path": path,
            "headers": {k.lower(): v for k, v in handler.headers.items()},
            "status": None,  # set when the answer is sent
        }
        with self._lock:
            self.requests.append((handler.command, path))
            self.log.append(entry)
        return entry


# -------------------------------------------------------------------- HTTP handling

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def _handler(hub: FakeHub, *, cdn: bool):
    class Handler(BaseHTTPRequestHandler):
        server_version = "FakeHub/1.0"

        def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
            pass

        def do_HEAD(self):
            self._dispatch()

        def do_GET(self):
            self._dispatch()

        def send_response(self, code, message=None):
            self._entry["status"] = code
            super().send_response(code, message)

        # ------------------------------------------------------------ plumbing

        def _dispatch(self):
            self._entry = hub._record(self, "cdn" if cdn else "hub")
            split = urlsplit(self.path)
            parts = split.path.split("/")[1:]
            query = parse_qs(split.query)
            try:
                if cdn:
                    return self._cdn(parts)
                if parts[:1] == ["files"]:
                    return self._plain(unquote("/".join(parts[1:])))
                if parts[:2] == ["api", "datasets"] and len(parts) >= 4:
                    return self._api(parts[2:], query)
                if parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
                    return self._resolve(parts[1:])
                self._error(404, "Not Found", "Sorry, we can't find the page you are looking for.")
            except _Answered:
                pass

        def _send(
            self, status: int, body: bytes = b"", headers: dict | None = None, *, length=None
        ):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)

        def _json(self, payload, headers: dict | None = None):
            body = json.dumps(payload).encode()
            self._send(200, body, {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, message: str, text: str, code: str | None = None, extra=None):
            headers = {"Content-Type": "application/json", "X-Error-Message": text, **(extra or {})}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": text}).encode(), headers)
            raise _Answered

        def _body(
            self, data: bytes, headers: dict, *, ranges: bool = True, cut_at=None, if_range=True
        ):
            """200 or 206 (Range) with `data`; `cut_at` closes the connection early."""
            status, start, end = 200, 0, len(data) - 1
            wanted = self.headers.get("Range")
            validator = self.headers.get("If-Range")
            if wanted and validator is not None and if_range and not _current(validator, headers):
                wanted = None  # changed since the client's copy: the whole file (RFC 9110 13.1.5)
            if wanted and ranges:
                match = _RANGE.match(wanted.strip())
                if match and (match.group(1) or match.group(2)):
                    if match.group(1):
                        start = int(match.group(1))
                        end = (
                            min(int(match.group(2)), len(data) - 1)
                            if match.group(2)
                            else len(data) - 1
                        )
                    else:
                        start = max(len(data) - int(match.group(2)), 0)
                    if start >= len(data) or start > end:
                        self._send(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
                        return
                    status = 206
                    headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
            chunk = data[start : end + 1]
            headers = {"Accept-Ranges": "bytes" if ranges else "none", **headers}
            if cut_at is None or self.command == "HEAD":
                self._send(status, chunk, headers)
                return
            # announce the whole length, send less, hang up: an interrupted transfer
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            self.wfile.write(chunk[: max(cut_at - start, 0)])
            self.wfile.flush()
            self.close_connection = True

        # ------------------------------------------------------------ auth

        def _authorize(self, repo: FakeRepo | None, *, files: bool) -> None:
            auth = self.headers.get("Authorization", "")
            sent = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
            if sent is not None and sent != hub.token:
                self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            if repo is None or (repo.private and sent is None):
                # the Hub does not tell a missing repo from a private one
                status = 404 if sent else 401
                self._error(status, "Not Found", "Repository not found", "RepoNotFound")
            if repo.gated and files and sent is None:  # a gated repo's listing is public
                self._error(
                    401,
                    "Unauthorized",
                    f"Access to dataset {repo.repo_id} is restricted. You must be authenticated to access it.",
                    "GatedRepo",
                )

        def _repo(self, owner: str, name: str, *, files: bool = False) -> FakeRepo:
            repo = hub.repos.get(f"{unquote(owner)}/{unquote(name)}")
            self._authorize(repo, files=files)
            assert repo is not None
            return repo

        def _commit(self, repo: FakeRepo, revision_raw: str) -> tuple[str, dict[str, bytes]]:
            revision = unquote(revision_raw)
            sha = repo.commit_of(revision)
            if sha is None:
                self._error(404, "Not Found", f"Invalid rev id: {revision}", "RevisionNotFound")
            return sha, repo.commits[sha]

        # ------------------------------------------------------------ endpoints

        def _api(self, parts: list[str], query: dict):
            owner, name, *rest = parts
            repo = self._repo(owner, name)
            if not rest or rest[0] == "revision":
                sha, files = self._commit(repo, rest[1] if len(rest) > 1 else MAIN)
                return self._json(
                    {
                        "_id": sha[:24],
                        "id": repo.repo_id,
                        "author": repo.repo_id.split("/")[0],
                        "sha": sha,
                        "private": repo.private,
                        "gated": "auto" if repo.gated else False,
                        "disabled": False,
                        "tags": [],
                        "siblings": [{"rfilename": p} for p in sorted(files)],
                    }
                )
            if rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo, rest[1], unquote("/".join(rest[2:])), query)
            self._error(404, "Not Found", "Sorry, we can't find the page you are looking for.")

        def _tree(self, repo: FakeRepo, revision_raw: str, base: str, query: dict):
            sha, files = self._commit(repo, revision_raw)
            recursive = query.get("recursive", ["false"])[0] == "true"
            entries: dict[str, dict] = {}
            prefix = f"{base.strip('/')}/" if base.strip("/") else ""
            for path, data in files.items():
                if not path.startswith(prefix):
                    continue
                parts = path[len(prefix) :].split("/")
                for depth in range(1, len(parts)):  # the directories on the way
                    if depth > 1 and not recursive:
                        break
                    folder = prefix + "/".join(parts[:depth])
                    entries[folder] = {
                        "type": "directory",
                        "oid": hashlib.sha1(f"{sha}:{folder}".encode()).hexdigest(),
                        "size": 0,
                        "path": folder,
                    }
                if len(parts) > 1 and not recursive:
                    continue
                entry = {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path}
                if hub.is_lfs(path):
                    entry["lfs"] = {
                        "oid": hashlib.sha256(data).hexdigest(),
                        "size": len(data),
                        "pointerSize": 134,
                    }
                entries[path] = entry
            if prefix and not entries:
                self._error(
                    404, "Not Found", f"{base} does not exist on {revision_raw}", "EntryNotFound"
                )
            ordered = [entries[k] for k in sorted(entries)]
            start = int(query.get("cursor", ["0"])[0])
            page = ordered[start : start + hub.page_size]
            headers = {}
            if start + hub.page_size < len(ordered):
                path = self.path.split("?", 1)[0]
                flags = f"recursive={'true' if recursive else 'false'}"
                flags += f"&expand={query.get('expand', ['false'])[0]}"
                nxt = f"{hub.url}{path}?{flags}&cursor={start + hub.page_size}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            self._json(page, headers)

        def _resolve(self, parts: list[str]):
            owner, name, _resolve, revision_raw, *path_parts = parts
            repo = self._repo(owner, name, files=True)
            sha, files = self._commit(repo, revision_raw)
            path = unquote("/".join(path_parts))
            if path not in files:
                self._error(
                    404, "Not Found", "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha}
                )
            data = files[path]
            if hub.is_lfs(path):
                sha256 = hashlib.sha256(data).hexdigest()
                location = f"{hub.cdn_url}/lfs/{sha256}?X-Amz-Signature=fake&response-content-disposition={quote(path)}"
                body = f"Found. Redirecting to {location}".encode()
                return self._send(
                    302,
                    body,
                    {
                        "Location": location,
                        "X-Repo-Commit": sha,
                        "ETag": f'"{git_blob_sha(data)}"',
                        "X-Linked-Etag": f'"{sha256}"',
                        "X-Linked-Size": len(data),
                        "Content-Type": "text/plain; charset=utf-8",
                    },
                )
            self._body(
                data,
                {
                    "X-Repo-Commit": sha,
                    "ETag": f'"{git_blob_sha(data)}"',
                    "Content-Type": "application/octet-stream",
                },
            )

        def _cdn(self, parts: list[str]):
            if len(parts) != 2 or parts[0] != "lfs" or parts[1] not in hub.blobs:
                self._send(
                    403,
                    b"<Error><Code>AccessDenied</Code></Error>",
                    {"Content-Type": "application/xml"},
                )
                return
            self._body(
                hub.blobs[parts[1]],
                {"Content-Type": "binary/octet-stream", "ETag": f'"{parts[1]}"'},
            )

        def _plain(self, name: str):
            file = hub.files.get(name)
            if file is None:
                self._send(404, b"no such file", {"Content-Type": "text/plain"})
                return
            if self.command == "HEAD" and not file.head:
                self._send(405, b"", {"Allow": "GET"})
                return
            with hub._lock:  # one version of the file per answer, even while a test changes it
                data, validators = file.data, file.validators()
            self._body(
                data,
                {"Content-Type": "application/octet-stream", **validators},
                ranges=file.ranges,
                cut_at=file.cut_at,
                if_range=file.if_range,
            )

    return Handler


def _current(validator: str, headers: dict) -> bool:
    """Whether an If-Range validator is the file's current one: a strong ETag compared strongly,
    or exactly the Last-Modified date."""
    if validator.startswith(("W/", '"')):
        etag = headers.get("ETag")
        return not validator.startswith("W/") and etag is not None and validator == etag
    return validator == headers.get("Last-Modified")


class _Answered(Exception):
    """An error response has been sent; stop handling the request."""


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A running FakeHub; HF_ENDPOINT points at it, HF_HOME and the token file are private."""
    from huggingface_hub import constants

    hub = FakeHub().start()
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub froze these at import time: a token stored by `hf auth login` on this
    # machine, or an offline setting, must not leak into the tests; and with telemetry on, the
    # first request of a process also GETs {import-time endpoint}/api/agent-harnesses (to name
    # the AI agent in the user-agent), which would go to huggingface.co
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"))
    try:
        yield hub
    finally:
        hub.stop()
