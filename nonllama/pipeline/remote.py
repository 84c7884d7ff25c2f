"""Remote sources of the `download` stage: Hugging Face datasets and http(s) URLs.

A Hub source is `hf:OWNER/NAME[:CONFIG][@REVISION]`. It is resolved once, up front, into
the list of its Parquet files at one commit (`resolve_hub_files`); each file is then fetched
only when a reader needs it (`fetch_hub_file`), into the huggingface_hub cache, so a rerun
never downloads again a file it already has. A URL is fetched by `fetch_url` into a plain
cache directory, with a record of which version of the file it holds (ETag, Last-Modified,
size): a copy is fetched again when the server's file changed (`probe_url` asks with a HEAD),
and an interrupted download resumes with Range + If-Range, so a file that changed meanwhile
comes whole rather than as a splice of two versions.

huggingface_hub reads HF_ENDPOINT into a constant when it is imported, so the endpoint is
read from the environment at each call and passed explicitly; HF_TOKEN is read by
huggingface_hub at each call.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import xxhash

from nonllama.pipeline.records import SourceError

HUB_PREFIX = "hf:"
CONVERT_BRANCH = "refs/convert/parquet"  # the Hub's auto-converted Parquet export
CONVERT_DEFAULT_CONFIG = "default"
DEFAULT_ENDPOINT = "https://huggingface.co"
URL_TIMEOUT = 60.0  # seconds without a byte from the server before giving up
CHUNK_SIZE = 1 << 20
_LISTED = 8  # how many names an error message lists before "(+N more)"


# --------------------------------------------------------------------------- Hub specs


@dataclass
class HubSpec:
    repo_id: str
    config: str | None
    revision: str | None


_NAME = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_REPO_RE = re.compile(rf"{_NAME}/{_NAME}", re.ASCII)
_CONFIG_RE = re.compile(r"[^\s/:@]+")
_REVISION_RE = re.compile(r"[^\s:@~^\\]+")


def parse_hub_spec(spec: str) -> HubSpec:
    """'hf:OWNER/NAME[:CONFIG][@REVISION]' -> HubSpec; SourceError on malformed spec."""
    usage = "expected hf:OWNER/NAME[:CONFIG][@REVISION], e.g. hf:roneneldan/TinyStories"
    if not spec.startswith(HUB_PREFIX):
        raise SourceError(f"{spec!r} is not a Hugging Face dataset: {usage}")
    body = spec[len(HUB_PREFIX) :]
    if body.startswith("//"):
        raise SourceError(f"malformed dataset spec {spec!r}: {usage} (not an hf:// URI)")
    head, at, revision = body.partition("@")
    repo_id, colon, config = head.partition(":")
    if at and not revision:
        raise SourceError(f"malformed dataset spec {spec!r}: empty revision after '@'; {usage}")
    if at and ":" in revision:
        raise SourceError(
            f"malformed dataset spec {spec!r}: the :CONFIG goes before @REVISION; {usage}"
        )
    if at and not _REVISION_RE.fullmatch(revision):
        raise SourceError(
            f"malformed dataset spec {spec!r}: invalid revision {revision!r}; {usage}"
        )
    if colon and not config:
        raise SourceError(f"malformed dataset spec {spec!r}: empty config after ':'; {usage}")
    if colon and not _CONFIG_RE.fullmatch(config):
        raise SourceError(f"malformed dataset spec {spec!r}: invalid config {config!r}; {usage}")
    if not _REPO_RE.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise SourceError(
            f"malformed dataset spec {spec!r}: {repo_id!r} is not OWNER/NAME; {usage}"
        )
    return HubSpec(repo_id=repo_id, config=config or None, revision=revision or None)


def _label(spec: HubSpec) -> str:
    text = f"{HUB_PREFIX}{spec.repo_id}"
    if spec.config:
        text += f":{spec.config}"
    if spec.revision:
        text += f"@{spec.revision}"
    return text


def _endpoint() -> str:
    """The Hub endpoint, read now: huggingface_hub's own constant is frozen at import time."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT or DEFAULT_ENDPOINT).rstrip("/")


def _api():
    from huggingface_hub import HfApi

    return HfApi(endpoint=_endpoint())


# --------------------------------------------------------------------------- Hub errors


def _has_token() -> bool:
    from huggingface_hub import get_token

    try:
        return get_token() is not None
    except Exception:  # a broken OIDC setup, an unreadable token file: treat as no token
        return False


def _one_line(text: object, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _gated_message(label: str, endpoint: str) -> str:
    return (
        f"{label}: the dataset is gated: accept its conditions on {endpoint} and set HF_TOKEN "
        "to a token of the account that did"
    )


@contextlib.contextmanager
def _hub_errors(
    label: str, *, revision: str | None = None, path: str | None = None
) -> Iterator[None]:
    """Turn huggingface_hub / network exceptions into one-line SourceErrors naming the source."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = _endpoint()
    try:
        yield
    except SourceError:
        raise
    except GatedRepoError as exc:
        raise SourceError(_gated_message(label, endpoint)) from exc
    except RepositoryNotFoundError as exc:
        if _has_token():
            msg = f"{label}: dataset not found on {endpoint}, or HF_TOKEN has no access to it"
        else:
            msg = (
                f"{label}: dataset not found on {endpoint} (if it is private or gated, "
                "set HF_TOKEN to a token with read access)"
            )
        raise SourceError(msg) from exc
    except RevisionNotFoundError as exc:
        raise SourceError(f"{label}: revision {revision!r} not found on {endpoint}") from exc
    except RemoteEntryNotFoundError as exc:
        raise SourceError(f"{label}: file {path!r} not found at revision {revision}") from exc
    except HfHubHTTPError as exc:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        if status == 401:
            hint = (
                "HF_TOKEN was rejected" if _has_token() else "authentication required: set HF_TOKEN"
            )
            raise SourceError(f"{label}: HTTP 401 Unauthorized from {endpoint}: {hint}") from exc
        if status == 403:
            raise SourceError(
                f"{label}: HTTP 403 Forbidden from {endpoint}: HF_TOKEN lacks permission to read this dataset"
            ) from exc
        reason = getattr(response, "reason_phrase", "") or ""
        server = getattr(exc, "server_message", None)
        detail = f" ({_one_line(server)})" if server else ""
        raise SourceError(
            f"{label}: HTTP {status} {reason} from {endpoint}{detail}".rstrip()
        ) from exc
    except OfflineModeIsEnabled as exc:
        raise SourceError(f"{label}: HF_HUB_OFFLINE is set, and this needs the Hub") from exc
    except LocalEntryNotFoundError as exc:
        cause = exc.__cause__ or exc
        raise SourceError(f"{label}: cannot reach {endpoint}: {_one_line(cause)}") from exc
    except OSError as exc:  # connection refused, DNS, timeouts
        raise SourceError(f"{label}: cannot reach {endpoint}: {_one_line(exc)}") from exc
    except Exception as exc:
        # transport errors of the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in
        # 1.x) are not OSErrors
        if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2"):
            detail = _one_line(exc) or type(exc).__name__
            raise SourceError(f"{label}: cannot reach {endpoint}: {detail}") from exc
        raise


# --------------------------------------------------------------------------- Hub resolution


_SHARD_SUFFIX = re.compile(r"(?:-\d+-of-\d+|[-_.]\d+)$")
_TOKEN_SEP = re.compile(r"[-_. ]+")


def _split_names(path: str) -> tuple[set[str], set[str]]:
    """(exact, loose) split names a Parquet path may stand for.

    Exact: a directory component, or the file name less its shard suffix
    ('data/train-00000-of-00002.parquet' -> 'train'). Loose: also every token of those
    ('data/wiki_train.parquet' -> 'wiki', 'train').
    """
    *dirs, name = path.split("/")
    stem = name[: -len(".parquet")]
    while True:
        shorter = _SHARD_SUFFIX.sub("", stem)
        if shorter == stem:
            break
        stem = shorter
    exact = set(dirs) | ({stem} if stem else set())
    loose = set(exact)
    for part in exact:
        loose.update(t for t in _TOKEN_SEP.split(part) if t)
    return exact, loose


def _is_parquet(path: str) -> bool:
    return path.lower().endswith(".parquet")


def _select(paths: list[str], config: str | None, split: str | None) -> list[str]:
    """The Parquet files of a config and split (see resolve_hub_files for the rules)."""
    found = [p for p in paths if _is_parquet(p)]
    if config:
        found = [p for p in found if config in p.split("/")[:-1]]
    if split:
        names = {p: _split_names(p) for p in found}
        exact = [p for p in found if split in names[p][0]]
        # 'train' also matches 'train_sft-0000.parquet' loosely: only when nothing matches exactly
        found = exact or [p for p in found if split in names[p][1]]
    return sorted(found)


def _listing(names: list[str], limit: int = _LISTED) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _describe_branch(paths: list[str], ref: str) -> str:
    """What a branch holds, for an error message."""
    parquet = sorted(p for p in paths if _is_parquet(p))
    if parquet:
        return f"Parquet files at {ref}: {_listing(parquet)}"
    others = sorted(paths)
    if others:
        return f"no Parquet files at {ref} (it has: {_listing(others)})"
    return f"no files at {ref}"


def _describe_convert(paths: list[str] | None) -> str:
    if paths is None:
        return f"no auto-converted {CONVERT_BRANCH} branch"
    layout: dict[str, set[str]] = {}
    for p in paths:
        parts = p.split("/")
        if _is_parquet(p) and len(parts) >= 3:
            layout.setdefault(parts[0], set()).add(parts[1])
    if not layout:
        return _describe_branch(paths, CONVERT_BRANCH)
    configs = [f"{c} (splits: {', '.join(sorted(s))})" for c, s in sorted(layout.items())]
    return f"configs on {CONVERT_BRANCH}: {_listing(configs)}"


def _wanted(config: str | None, split: str | None) -> str:
    parts = [f"config {config!r}" if config else "", f"split {split!r}" if split else ""]
    return " and ".join(p for p in parts if p) or "any config and split"


def _commit(api, label: str, repo_id: str, revision: str | None) -> str:
    """The commit a revision (None: the default branch) points to now."""
    info = api.dataset_info(repo_id, revision=revision)
    if info.gated and not _has_token():
        # the Hub lists a gated dataset's files to anyone but serves them only to accounts
        # that accepted its conditions: say so now rather than when the first file is fetched
        raise SourceError(_gated_message(label, _endpoint()))
    if not info.sha:
        raise SourceError(
            f"{label}: the Hub did not say which commit {revision or 'the default branch'} is"
        )
    return info.sha


def _files_at(api, repo_id: str, commit: str) -> list[str]:
    return sorted(api.list_repo_files(repo_id, repo_type="dataset", revision=commit))


def resolve_hub_files(spec: HubSpec, split: str | None) -> list[tuple[str, str]]:
    """The dataset's Parquet files for the config and split, as [(path_in_repo, commit)], sorted.

    Files are listed through huggingface_hub (HF_ENDPOINT and HF_TOKEN honoured). The revision
    (the default branch when none was given) is pinned to its current commit, so that every
    file comes from the same snapshot, a rerun can tell when the dataset changed upstream, and
    fetching an already cached file needs no request at all.

    Rules: Parquet files only; with a config, files under a directory named after it
    ('CONFIG/train/0000.parquet', 'data/CONFIG/...'); with a split, files with a directory
    named after it, or a file name that is the split plus a shard suffix
    ('train/0000.parquet', 'data/train-00000-of-00002.parquet'), else whose directory or file
    name has the split as a '-'/'_'/'.'-separated token. When no revision was given and the
    default branch has no matching file, the Hub's auto-converted branch refs/convert/parquet
    (layout CONFIG/SPLIT/NNNN.parquet, config 'default' when none was given) is tried.
    """
    label = _label(spec)
    api = _api()
    revision = spec.revision
    with _hub_errors(label, revision=revision):
        commit = _commit(api, label, spec.repo_id, revision)
        paths = _files_at(api, spec.repo_id, commit)
    config = spec.config
    if revision == CONVERT_BRANCH and not config:
        config = CONVERT_DEFAULT_CONFIG
    found = _select(paths, config, split)
    if found:
        return [(p, commit) for p in found]

    ref = revision or "the default branch"
    if revision is not None:
        where = (
            _describe_convert(paths) if revision == CONVERT_BRANCH else _describe_branch(paths, ref)
        )
        raise SourceError(f"{label}: no Parquet files for {_wanted(config, split)}; {where}")

    from huggingface_hub.errors import RevisionNotFoundError

    convert_config = spec.config or CONVERT_DEFAULT_CONFIG
    convert_commit: str | None = None
    convert_paths: list[str] | None = None
    with _hub_errors(label, revision=CONVERT_BRANCH):
        try:
            convert_commit = _commit(api, label, spec.repo_id, CONVERT_BRANCH)
        except RevisionNotFoundError:
            convert_commit = None
        if convert_commit is not None:
            convert_paths = _files_at(api, spec.repo_id, convert_commit)
    if convert_commit is not None and convert_paths is not None:
        found = _select(convert_paths, convert_config, split)
        if found:
            return [(p, convert_commit) for p in found]
    raise SourceError(
        f"{label}: no Parquet files for {_wanted(spec.config, split)}; "
        f"{_describe_branch(paths, ref)}; {_describe_convert(convert_paths)}"
    )


# --------------------------------------------------------------------------- Hub fetching


def _quiet_bar_class():
    """huggingface_hub's progress bar, always disabled: its stderr output would garble the
    stage's own progress display (and it comes from worker processes)."""
    from huggingface_hub.utils.tqdm import tqdm

    class QuietBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return QuietBar


def fetch_hub_file(spec: HubSpec, path_in_repo: str, revision: str, cache_dir: Path) -> Path:
    """Download one file of the dataset into the huggingface_hub cache under `cache_dir`.

    A complete file is never fetched again: with a commit as revision (what
    resolve_hub_files returns) a cached file costs no request at all; with a branch, one HEAD.
    Returns the local path (a snapshot path that keeps the file's name and suffix).
    """
    from huggingface_hub import hf_hub_download

    label = f"{HUB_PREFIX}{spec.repo_id}@{revision}/{path_in_repo}"
    with _hub_errors(label, revision=revision, path=path_in_repo):
        local = hf_hub_download(
            spec.repo_id,
            path_in_repo,
            repo_type="dataset",
            revision=revision,
            cache_dir=Path(cache_dir),
            endpoint=_endpoint(),
            tqdm_class=_quiet_bar_class(),
        )
    return Path(local)


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class UrlVersion:
    """Which version of a remote file a response describes: the server's validators.

    `etag` and `last_modified` are the ETag and Last-Modified headers as sent, `size` the whole
    file's length in bytes; a server need not send any of them (None).
    """

    etag: str | None = None
    last_modified: str | None = None
    size: int | None = None

    @classmethod
    def from_response(cls, status: int, headers) -> UrlVersion:
        """The version an HTTP answer (200, 206, 416, or a HEAD's 200) describes."""
        size = None
        if status in (206, 416):
            match = _CONTENT_RANGE_TOTAL.search(headers.get("Content-Range", "") or "")
            size = int(match.group(1)) if match else None
        elif status == 200:
            length = (headers.get("Content-Length") or "").strip()
            size = int(length) if length.isdigit() else None
        return cls(headers.get("ETag") or None, headers.get("Last-Modified") or None, size)

    def describe(self) -> str:
        """One line, for the stage's input fingerprint and for messages."""
        return f"etag={self.etag} last-modified={self.last_modified} size={self.size}"

    def if_range(self) -> str | None:
        """The validator to send as If-Range: a strong ETag, else the Last-Modified date.

        A weak ETag (W/"...") must not be sent in If-Range (RFC 9110 13.1.5): it only says two
        versions mean the same, not that their bytes are the same, and a range must splice bytes.
        """
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def differs_from(self, other: UrlVersion) -> bool:
        """True when `other` is known to be another version of the file than this one.

        Only what both sides have is compared. ETags are compared weakly (W/"x" and "x" are the
        same tag: a server may weaken a tag, e.g. when it compresses, without the file changing).
        Without ETag and Last-Modified the size alone decides, and it cannot see a change that
        keeps the size (a fixed typo, a record edited to the same length): such a file is taken
        for unchanged and the cached copy is used until `--force`. With no size either, no
        change can be seen at all.
        """
        if self.etag and other.etag and _weak(self.etag) != _weak(other.etag):
            return True
        if self.last_modified and other.last_modified and self.last_modified != other.last_modified:
            return True
        return self.size is not None and other.size is not None and self.size != other.size


def _weak(etag: str) -> str:
    return etag[2:] if etag.startswith("W/") else etag


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_CONTENT_RANGE_TOTAL = re.compile(r"/(\d+)\s*$")  # 'bytes 0-9/100' and 416's 'bytes */100'


def _cache_name(url: str) -> str:
    """'<xxhash of url>-<basename>': the basename keeps its suffix (readers dispatch on it)."""
    path = urlsplit(url).path
    base = unquote(path.rstrip("/").rsplit("/", 1)[-1])
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "download"
    return f"{xxhash.xxh64_hexdigest(url.encode())}-{base[-120:]}"


def _meta_path(path: Path) -> Path:
    """The sidecar that records which version of the URL `path` (a cached file or its .part) holds."""
    return path.with_name(path.name + ".meta.json")


@dataclass(frozen=True)
class _Fetched:
    """A sidecar's record: the version a file's bytes are of, and when its fetch began."""

    version: UrlVersion
    fetched_at: float  # time.time() when the GET that began the file was sent


def _read_meta(path: Path) -> _Fetched | None:
    """The record of `path`, or None when it has none, or one this code cannot read (an older
    nonllama's cache, a file cut short): such bytes are of an unknown version and not reused."""
    try:
        raw = json.loads(_meta_path(path).read_text(encoding="utf-8"))
        size = raw["size"]
        return _Fetched(
            UrlVersion(raw["etag"], raw["last_modified"], int(size) if size is not None else None),
            float(raw["fetched_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_meta(path: Path, url: str, record: _Fetched) -> None:
    meta = _meta_path(path)
    tmp = meta.with_name(f".{meta.name}.tmp-{os.getpid()}")
    payload = {"url": url, **asdict(record.version), "fetched_at": record.fetched_at}
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, meta)


def _forget(path: Path) -> None:
    """Remove a cached file (or .part) and its record; the record first, so that a crash in
    between never leaves a record describing bytes that are not there."""
    _meta_path(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def _usable(record: _Fetched | None, refetch_before: float | None) -> _Fetched | None:
    if record is None or (refetch_before is not None and record.fetched_at < refetch_before):
        return None
    return record


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (two workers fetching the same URL take turns)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, downloads of the same URL may race
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _http_error(url: str, exc: urllib.error.HTTPError) -> SourceError:
    reason = exc.reason if isinstance(exc.reason, str) and exc.reason else ""
    if not reason:
        from http import HTTPStatus

        with contextlib.suppress(ValueError):
            reason = HTTPStatus(exc.code).phrase
    return SourceError(f"HTTP {exc.code} {reason} for {url}".replace("  ", " "))


def _open(url: str, headers: dict[str, str], timeout: float, method: str = "GET"):
    """The server's answer; urllib's HTTPError for a 4xx/5xx (the caller decides), any other
    failure a one-line SourceError naming the URL."""
    request = urllib.request.Request(
        url,
        headers={"User-Agent": "nonllama", "Accept-Encoding": "identity", **headers},
        method=method,
    )
    try:
        return urllib.request.build_opener().open(request, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as exc:
        raise SourceError(f"cannot download {url}: {_one_line(exc.reason)}") from exc
    except TimeoutError as exc:
        raise SourceError(f"cannot download {url}: no answer within {timeout:g}s") from exc
    except OSError as exc:
        raise SourceError(f"cannot download {url}: {_one_line(exc)}") from exc


def probe_url(url: str, *, timeout: float = URL_TIMEOUT) -> UrlVersion:
    """The version of the file the server has at `url` now, from a HEAD (no body is sent).

    A server that refuses HEAD (405, 501) is asked for the first byte instead. HTTP errors
    become SourceError('HTTP 404 Not Found for URL').
    """
    _check_scheme(url)
    try:
        response = _open(url, {}, timeout, method="HEAD")
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code not in (405, 501):
            raise _http_error(url, exc) from exc
        try:
            response = _open(url, {"Range": "bytes=0-0"}, timeout)
        except urllib.error.HTTPError as again:
            again.close()
            raise _http_error(url, again) from again
    with response:  # closed unread: a server that ignored the Range does not send us the file
        return UrlVersion.from_response(response.status, response.headers)


def _check_scheme(url: str) -> None:
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise SourceError(f"not an http(s) URL: {url}")


def fetch_url(
    url: str,
    cache_dir: Path,
    progress: Callable[[int, int | None], None] | None = None,
    *,
    version: UrlVersion | None = None,
    refetch_before: float | None = None,
    timeout: float = URL_TIMEOUT,
) -> Path:
    """Download an http(s) URL to cache_dir/<xxhash of url>-<basename>, or return the copy there.

    Each cached file has a sidecar '<name>.meta.json' recording the version (ETag,
    Last-Modified, size: see UrlVersion) of the response its bytes came from. The copy is
    reused unless the server's file is now another version: `version` is what the server has
    (probe_url's answer, e.g. from when the download stage planned); without it one HEAD asks.
    A copy fetched before `refetch_before` (a time.time(): when a --force run began) is fetched
    again.

    The body streams into '<name>.part' (with its own sidecar), renamed into place once
    complete. An existing .part is resumed with a Range request carrying If-Range (its ETag,
    else its Last-Modified date), so a server whose file changed since answers 200 with the
    whole new file, and the .part is rewritten rather than spliced with the new file's tail; a
    206 whose validators or total size are not the .part's is refused the same way.
    Errors are one-line SourceErrors naming the URL ('HTTP 404 Not Found for URL', an
    interrupted or short transfer). `progress(done, total)` is called as chunks arrive (total
    None when the server does not say).
    """
    _check_scheme(url)
    cache_dir = Path(cache_dir)
    final = cache_dir / _cache_name(url)
    cached = _usable(_read_meta(final), refetch_before) if final.is_file() else None
    if cached is not None:
        if version is None:
            version = probe_url(url, timeout=timeout)
        if not cached.version.differs_from(version):
            return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(final.with_name(final.name + ".lock")):
        cached = _usable(_read_meta(final), refetch_before) if final.is_file() else None
        # another worker may have fetched it while we waited (version None: we had no copy, so
        # this one is seconds old)
        if cached is not None and (version is None or not cached.version.differs_from(version)):
            return final
        _forget(final)  # an outdated copy goes before the new one is fetched: no one reads it as current
        _download(url, final, version, refetch_before, progress, timeout)
    return final


def _resumable(part: Path, version: UrlVersion | None, refetch_before: float | None) -> _Fetched | None:
    """The record of a .part worth resuming, or None: start again from the first byte."""
    if not part.is_file() or part.stat().st_size == 0:
        return None
    record = _usable(_read_meta(part), refetch_before)
    if record is None:
        return None
    if version is not None and record.version.differs_from(version):
        return None  # the server's file changed since the .part began: no need to ask
    if record.version.if_range() is None and record.version.size is None:
        return None  # nothing to tell a range of this version from a range of another
    return record


def _download(
    url: str,
    final: Path,
    version: UrlVersion | None,
    refetch_before: float | None,
    progress,
    timeout: float,
) -> None:
    part = final.with_name(final.name + ".part")
    record = _resumable(part, version, refetch_before)
    while True:
        offset = part.stat().st_size if record is not None else 0
        headers = {}
        if record is not None:
            headers["Range"] = f"bytes={offset}-"
            validator = record.version.if_range()
            if validator is not None:
                # without a validator the resumed range is checked by the total size alone
                headers["If-Range"] = validator
        requested_at = time.time()
        try:
            response = _open(url, headers, timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and record is not None:
                answered = UrlVersion.from_response(416, exc.headers)
                if answered.size == offset and not record.version.differs_from(answered):
                    # the .part is already whole (stopped before its rename)
                    if progress is not None:
                        progress(offset, offset)
                    _finish(part, final)
                    return
                record = None  # the .part does not fit what the server has now: start again
                continue
            raise _http_error(url, exc) from exc
        answered = UrlVersion.from_response(response.status, response.headers)
        if record is not None and response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not (match and int(match.group(1)) == offset) or record.version.differs_from(answered):
                # not the range asked for, or a range of another version of the file (a server
                # that ignores If-Range, or one without validators whose size changed)
                response.close()
                record = None
                continue
        break
    with response:
        if record is not None and response.status == 206:
            done, mode = offset, "ab"
            total = record.version.size if record.version.size is not None else answered.size
        else:  # a 200: the whole file, maybe a newer version than `version` (changed since
            # that HEAD): recorded as the version it is, so the next run's HEAD finds the copy current
            if version is not None and answered.size is None and not answered.differs_from(version):
                answered = UrlVersion(answered.etag, answered.last_modified, version.size)
            record = _Fetched(answered, requested_at)
            # the old bytes go before the record of the new version is written: a crash in
            # between must never leave old bytes under a new version's record
            _forget(part)
            _write_meta(part, url, record)
            done, mode, total = 0, "wb", record.version.size
        _stream(url, response, part, mode, done, total, progress, timeout)
    _finish(part, final)


def _finish(part: Path, final: Path) -> None:
    """The whole .part becomes the cached file; its record moves after it (a crash in between
    leaves a file without a record, which is fetched again, never a record for other bytes)."""
    os.replace(part, final)
    os.replace(_meta_path(part), _meta_path(final))


def _stream(
    url, response, part: Path, mode: str, done: int, total, progress, timeout: float
) -> None:
    import http.client

    resumable = "rerun to resume"
    with open(part, mode) as out:
        if progress is not None:
            progress(done, total)
        while True:
            try:
                chunk = response.read(CHUNK_SIZE)
            except TimeoutError as exc:
                raise SourceError(
                    f"download of {url} stalled for {timeout:g}s ({resumable})"
                ) from exc
            except (http.client.IncompleteRead, OSError) as exc:
                raise SourceError(
                    f"download of {url} was interrupted ({resumable}): {_one_line(exc)}"
                ) from exc
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    if total is not None and done < total:
        raise SourceError(
            f"download of {url} was interrupted at {done} of {total} bytes ({resumable})"
        )
    if total is not None and done > total:
        _forget(part)  # more bytes than the file has: they cannot be trusted, nor resumed
        raise SourceError(f"download of {url}: size mismatch: received {done} bytes, the server "
                          f"announced {total}")
