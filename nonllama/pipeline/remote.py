"""Remote sources of the `download` stage: Hugging Face datasets and http(s) URLs.

A Hub source is `hf:OWNER/NAME[:CONFIG][@REVISION]`. It is resolved once, up front, into
the list of its Parquet files at one commit (`resolve_hub_files`); each file is then fetched
only when a reader needs it (`fetch_hub_file`), into the huggingface_hub cache, so a rerun
never downloads again a file it already has. A URL is fetched by `fetch_url` into a plain
cache directory, resuming an interrupted download with an HTTP Range request.

huggingface_hub reads HF_ENDPOINT into a constant when it is imported, so the endpoint is
read from the environment at each call and passed explicitly; HF_TOKEN is read by
huggingface_hub at each call.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


def _cache_name(url: str) -> str:
    """'<xxhash of url>-<basename>': the basename keeps its suffix (readers dispatch on it)."""
    path = urlsplit(url).path
    base = unquote(path.rstrip("/").rsplit("/", 1)[-1])
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "download"
    return f"{xxhash.xxh64_hexdigest(url.encode())}-{base[-120:]}"


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


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(
        url, headers={"User-Agent": "nonllama", "Accept-Encoding": "identity"}
    )
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    opener = urllib.request.build_opener()
    return opener.open(request, timeout=timeout)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def fetch_url(
    url: str,
    cache_dir: Path,
    progress: Callable[[int, int | None], None] | None = None,
    *,
    timeout: float = URL_TIMEOUT,
) -> Path:
    """Download an http(s) URL to cache_dir/<xxhash of url>-<basename>, or return it if it is there.

    The body streams into '<name>.part', renamed into place once complete. An existing .part
    is resumed with a Range request when the server answers 206, else the download restarts.
    HTTP errors become SourceError('HTTP 404 Not Found for URL'). `progress(done, total)` is
    called as chunks arrive (total None when the server does not say).
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise SourceError(f"not an http(s) URL: {url}")
    cache_dir = Path(cache_dir)
    final = cache_dir / _cache_name(url)
    if final.is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    with _locked(final.with_name(final.name + ".lock")):
        if final.is_file():  # another worker finished it while we waited
            return final
        _download(url, part, progress, timeout)
        os.replace(part, final)
    return final


def _download(url: str, part: Path, progress, timeout: float) -> None:
    offset = part.stat().st_size if part.is_file() else 0
    while True:
        try:
            response = _open(url, offset, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                whole = exc.headers.get("Content-Range", "") == f"bytes */{offset}"
                exc.close()
                if whole:  # the .part is already complete (stopped before its rename)
                    if progress is not None:
                        progress(offset, offset)
                    return
                offset = 0  # the .part does not fit what the server has now: start again
                continue
            raise _http_error(url, exc) from exc
        except urllib.error.URLError as exc:
            raise SourceError(f"cannot download {url}: {_one_line(exc.reason)}") from exc
        except TimeoutError as exc:
            raise SourceError(f"cannot download {url}: no answer within {timeout:g}s") from exc
        except OSError as exc:
            raise SourceError(f"cannot download {url}: {_one_line(exc)}") from exc
        if offset and response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not (match and int(match.group(1)) == offset):  # not the range we asked for
                response.close()
                offset = 0
                continue
        break
    with response:
        resumed = bool(offset) and response.status == 206  # else: a 200, the whole body again
        done = offset if resumed else 0
        _stream(
            url,
            response,
            part,
            "ab" if resumed else "wb",
            done,
            _total_size(response),
            progress,
            timeout,
        )


def _total_size(response) -> int | None:
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    if match and match.group(3) != "*":
        return int(match.group(3))
    length = response.headers.get("Content-Length")
    if response.status == 200 and length and length.isdigit():
        return int(length)
    return None


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
    if total is not None and done != total:
        raise SourceError(
            f"download of {url} was interrupted at {done} of {total} bytes ({resumable})"
        )
