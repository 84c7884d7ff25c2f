"""Remote sources: `hf:` dataset specs, Hub resolution and fetching, http(s) downloads.

Everything runs against tests/fake_hub.py, a local server speaking the Hub's HTTP API.
"""

from __future__ import annotations

import io
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nonllama.pipeline.records import SourceError
from nonllama.pipeline.remote import (
    CONVERT_BRANCH,
    HubSpec,
    UrlVersion,
    fetch_hub_file,
    fetch_url,
    parse_hub_spec,
    probe_url,
    resolve_hub_files,
)


def parquet(*texts: str) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"text": list(texts)}), sink)
    return sink.getvalue()


def texts_of(path) -> list[str]:
    return pq.read_table(path).column("text").to_pylist()


def resolve(spec: str, split: str | None = None) -> list[tuple[str, str]]:
    return resolve_hub_files(parse_hub_spec(spec), split)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- spec parsing


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hf:roneneldan/TinyStories", HubSpec("roneneldan/TinyStories", None, None)),
        ("hf:wikimedia/wikipedia:20231101.en", HubSpec("wikimedia/wikipedia", "20231101.en", None)),
        ("hf:org/data@v1.0", HubSpec("org/data", None, "v1.0")),
        (f"hf:org/data:default@{CONVERT_BRANCH}", HubSpec("org/data", "default", CONVERT_BRANCH)),
    ],
)
def test_parse_hub_spec(spec, expected):
    assert parse_hub_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "hf:",
        "hf:TinyStories",  # no owner
        "hf:a/b/c",
        "hf:org/data:",
        "hf:org/data@",
        "hf:org/data@main:en",  # config after the revision
        "hf:org/da ta",
        "hf://datasets/org/data",
        "org/data",
    ],
)
def test_parse_hub_spec_rejects_malformed_specs(spec):
    with pytest.raises(SourceError) as excinfo:
        parse_hub_spec(spec)
    message = one_line_error(excinfo)
    assert repr(spec) in message and "hf:OWNER/NAME" in message


# --------------------------------------------------------------------------- resolution


MULTI_CONFIG = {
    "README.md": b"# card",
    "en/train/0000.parquet": parquet("a"),
    "en/train/0001.parquet": parquet("b"),
    "en/test/0000.parquet": parquet("c"),
    "data/fr/train-00000-of-00001.parquet": parquet("d"),
    "data/fr/validation-00000-of-00001.parquet": parquet("e"),
}


def test_resolve_selects_config_and_split_at_one_commit(fake_hub):
    commit = fake_hub.add_dataset("org/multi", MULTI_CONFIG)
    assert resolve("hf:org/multi:en", "train") == [
        ("en/train/0000.parquet", commit),
        ("en/train/0001.parquet", commit),
    ]
    assert resolve("hf:org/multi:fr", "validation") == [
        ("data/fr/validation-00000-of-00001.parquet", commit)
    ]
    # no config, no split: every Parquet file, nothing else
    assert [p for p, _ in resolve("hf:org/multi")] == sorted(
        p for p in MULTI_CONFIG if p.endswith(".parquet")
    )


def test_resolve_prefers_the_exact_split_over_a_longer_name(fake_hub):
    fake_hub.add_dataset(
        "org/chat",
        {
            "data/train_sft-00000-of-00001.parquet": parquet("x"),
            "data/train-00000-of-00002.parquet": parquet("y"),
            "data/train-00001-of-00002.parquet": parquet("z"),
        },
    )
    assert [p for p, _ in resolve("hf:org/chat", "train")] == [
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
    ]
    assert [p for p, _ in resolve("hf:org/chat", "sft")] == [
        "data/train_sft-00000-of-00001.parquet"
    ]


def test_resolve_follows_tree_pagination(fake_hub):
    files = {f"data/train-{i:05d}-of-00007.parquet": parquet(str(i)) for i in range(7)}
    fake_hub.add_dataset("org/paged", files)
    fake_hub.page_size = 3
    assert [p for p, _ in resolve("hf:org/paged", "train")] == sorted(files)
    tree_calls = [p for m, p in fake_hub.requests if "/tree/" in p]
    assert len(tree_calls) >= 3


def test_resolve_honours_an_explicit_revision(fake_hub):
    old = fake_hub.add_dataset("org/versioned", {"train.parquet": parquet("old")}, revision="v1")
    fake_hub.add_dataset("org/versioned", {"train.parquet": parquet("new")})
    assert resolve("hf:org/versioned@v1", "train") == [("train.parquet", old)]


def test_resolve_falls_back_to_the_auto_converted_parquet_branch(fake_hub, tmp_path):
    fake_hub.add_dataset("org/jsonl", {"README.md": b"# card", "train.jsonl": b'{"text": "x"}\n'})
    convert = fake_hub.add_dataset(
        "org/jsonl",
        {
            "default/train/0000.parquet": parquet("converted", "rows"),
            "default/test/0000.parquet": parquet("held out"),
        },
        revision=CONVERT_BRANCH,
    )
    files = resolve("hf:org/jsonl", "train")
    assert files == [("default/train/0000.parquet", convert)]
    assert any("refs%2Fconvert%2Fparquet" in path for _, path in fake_hub.requests)

    local = fetch_hub_file(HubSpec("org/jsonl", None, None), *files[0], tmp_path / "hf")
    assert texts_of(local) == ["converted", "rows"]


def test_no_fallback_when_a_revision_was_asked_for(fake_hub):
    fake_hub.add_dataset("org/jsonl", {"train.jsonl": b"{}\n"}, revision="v2")
    fake_hub.add_dataset(
        "org/jsonl", {"default/train/0000.parquet": parquet("x")}, revision=CONVERT_BRANCH
    )
    with pytest.raises(SourceError) as excinfo:
        resolve("hf:org/jsonl@v2")
    message = one_line_error(excinfo)
    assert "hf:org/jsonl@v2" in message and "train.jsonl" in message
    assert not any("refs%2Fconvert" in path for _, path in fake_hub.requests)


# --------------------------------------------------------------------------- resolution errors


def test_unknown_repo_is_a_one_line_error(fake_hub):
    with pytest.raises(SourceError) as excinfo:
        resolve("hf:nobody/nothing")
    message = one_line_error(excinfo)
    assert "hf:nobody/nothing" in message and "not found" in message and "HF_TOKEN" in message


def test_missing_split_lists_what_exists(fake_hub):
    fake_hub.add_dataset("org/multi", MULTI_CONFIG)
    with pytest.raises(SourceError) as excinfo:
        resolve("hf:org/multi:en", "validation")
    message = one_line_error(excinfo)
    assert "hf:org/multi:en" in message and "'validation'" in message
    assert "en/train/0000.parquet" in message and "en/test/0000.parquet" in message


def test_missing_config_lists_converted_configs_and_splits(fake_hub):
    fake_hub.add_dataset("org/langs", {"train.csv": b"text\nx\n"})
    fake_hub.add_dataset(
        "org/langs",
        {"en/train/0000.parquet": parquet("x"), "fr/train/0000.parquet": parquet("y")},
        revision=CONVERT_BRANCH,
    )
    with pytest.raises(SourceError) as excinfo:
        resolve("hf:org/langs", "train")  # no config: 'default', which does not exist
    message = one_line_error(excinfo)
    assert "train.csv" in message
    assert "en (splits: train)" in message and "fr (splits: train)" in message


def test_private_repo_needs_hf_token(fake_hub, monkeypatch):
    commit = fake_hub.add_dataset("org/secret", {"train.parquet": parquet("s")}, private=True)
    with pytest.raises(SourceError) as excinfo:
        resolve("hf:org/secret")
    message = one_line_error(excinfo)
    assert "hf:org/secret" in message and "HF_TOKEN" in message

    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    assert resolve("hf:org/secret") == [("train.parquet", commit)]
    assert fake_hub.log[-1]["headers"]["authorization"] == f"Bearer {fake_hub.token}"

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(SourceError) as excinfo:
        resolve("hf:org/secret")
    assert "HF_TOKEN was rejected" in one_line_error(excinfo)


def test_gated_repo_says_so(fake_hub, tmp_path, monkeypatch):
    fake_hub.add_dataset("org/gated", {"train.parquet": parquet("g")}, gated=True)
    with pytest.raises(SourceError) as excinfo:  # fails before any file is fetched
        resolve("hf:org/gated")
    message = one_line_error(excinfo)
    assert "hf:org/gated" in message and "gated" in message and "HF_TOKEN" in message

    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    [(path, revision)] = resolve("hf:org/gated")
    monkeypatch.delenv("HF_TOKEN")  # e.g. a worker without the token
    with pytest.raises(SourceError) as excinfo:
        fetch_hub_file(HubSpec("org/gated", None, None), path, revision, tmp_path / "hf")
    assert "gated" in one_line_error(excinfo)


def test_unknown_revision_is_named(fake_hub):
    fake_hub.add_dataset("org/data", {"train.parquet": parquet("x")})
    with pytest.raises(SourceError) as excinfo:
        resolve("hf:org/data@v9")
    assert "'v9'" in one_line_error(excinfo)


# --------------------------------------------------------------------------- Hub fetching


def test_fetch_hub_file_downloads_once(fake_hub, tmp_path):
    fake_hub.add_dataset("org/data", {"data/train-00000-of-00001.parquet": parquet("one", "two")})
    spec = parse_hub_spec("hf:org/data")
    [(path, revision)] = resolve_hub_files(spec, "train")

    local = fetch_hub_file(spec, path, revision, tmp_path / "hf")
    assert local.name == "train-00000-of-00001.parquet"
    assert texts_of(local) == ["one", "two"]
    assert sum(1 for entry in fake_hub.log if entry["server"] == "cdn") == 1

    seen = len(fake_hub.requests)
    assert fetch_hub_file(spec, path, revision, tmp_path / "hf") == local
    assert len(fake_hub.requests) == seen  # pinned to a commit: not even a HEAD


def test_fetch_hub_file_by_branch_makes_no_second_get(fake_hub, tmp_path):
    fake_hub.add_dataset(
        "org/data", {"train.parquet": parquet("x"), "notes.txt": b"plain git file"}
    )
    spec = HubSpec("org/data", None, None)
    for name in ("train.parquet", "notes.txt"):
        first = fetch_hub_file(spec, name, "main", tmp_path / "hf")
        gets = [r for r in fake_hub.requests if r[0] == "GET"]
        assert fetch_hub_file(spec, name, "main", tmp_path / "hf") == first
        assert [r for r in fake_hub.requests if r[0] == "GET"] == gets
    assert (tmp_path / "hf").is_dir() and first.read_bytes() == b"plain git file"


def test_fetch_hub_file_keeps_the_token_off_the_cdn(fake_hub, tmp_path, monkeypatch):
    fake_hub.add_dataset("org/secret", {"train.parquet": parquet("s")}, private=True)
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    spec = parse_hub_spec("hf:org/secret")
    [(path, revision)] = resolve_hub_files(spec, None)
    assert texts_of(fetch_hub_file(spec, path, revision, tmp_path / "hf")) == ["s"]
    cdn = [e for e in fake_hub.log if e["server"] == "cdn"]
    assert cdn and all("authorization" not in e["headers"] for e in cdn)


def test_fetch_hub_file_missing_file_is_named(fake_hub, tmp_path):
    commit = fake_hub.add_dataset("org/data", {"train.parquet": parquet("x")})
    with pytest.raises(SourceError) as excinfo:
        fetch_hub_file(HubSpec("org/data", None, None), "gone.parquet", commit, tmp_path / "hf")
    assert "gone.parquet" in one_line_error(excinfo)


# --------------------------------------------------------------------------- URLs

BODY = bytes(range(256)) * 400  # 100 KiB
# another version of the file, of the same size: only the validators tell the two apart
NEW_BODY = bytes(reversed(range(256))) * 400
HALF = len(BODY) // 2


def gets(fake_hub, name: str) -> list[dict]:
    """The GETs the server saw for /files/{name}: headers sent, status answered."""
    return fake_hub.answered(f"/files/{name}", "GET")


def interrupted_file(fake_hub, cache, name: str, **options) -> str:
    """Serve BODY as `name` (`options`: the stand-in server's, e.g. which validators it sends) and
    fetch it until the server hangs up half-way: a .part of half the file is left. Its URL."""
    url = fake_hub.add_file(name, BODY, **options)
    fake_hub.files[name].cut_at = HALF
    with pytest.raises(SourceError) as excinfo:
        fetch_url(url, cache)
    message = one_line_error(excinfo)
    assert url in message and "resume" in message
    [part] = cache.glob("*.part")
    assert part.stat().st_size == HALF and not list(cache.glob(f"*-{name}"))
    fake_hub.files[name].cut_at = None  # the network is back
    return url


def test_fetch_url_downloads_and_caches(fake_hub, tmp_path):
    url = fake_hub.add_file("dump/data.jsonl.gz", BODY) + "?download=true"
    calls = []
    local = fetch_url(url, tmp_path, lambda done, total: calls.append((done, total)))
    assert local.read_bytes() == BODY
    assert local.parent == tmp_path and local.name.endswith("-data.jsonl.gz")
    assert calls[-1] == (len(BODY), len(BODY))
    assert not list(tmp_path.glob("*.part"))

    # unchanged on the server: one HEAD says so, the file is not fetched again
    assert fetch_url(url, tmp_path) == local
    path = "/files/dump/data.jsonl.gz"
    assert (fake_hub.hits(path, "GET"), fake_hub.hits(path, "HEAD")) == (1, 1)
    # told the server's version (as the download stage does after its plan): no request at all
    seen = len(fake_hub.requests)
    assert fetch_url(url, tmp_path, version=probe_url(url)) == local
    assert len(fake_hub.requests) == seen + 1  # probe_url's HEAD
    # another URL with the same basename gets its own file
    other = fake_hub.add_file("other/data.jsonl.gz", b"other")
    assert fetch_url(other, tmp_path) != local


@pytest.mark.parametrize("validator", ["ETag", "Last-Modified"])
def test_interrupted_download_resumes_with_if_range(fake_hub, tmp_path, validator):
    name = "flaky.bin"
    url = interrupted_file(fake_hub, tmp_path, name, etag=validator == "ETag", last_modified=validator == "Last-Modified")

    calls = []
    assert fetch_url(url, tmp_path, lambda d, t: calls.append((d, t))).read_bytes() == BODY
    resumed = gets(fake_hub, name)[-1]
    assert resumed["headers"]["range"] == f"bytes={HALF}-"
    assert resumed["headers"]["if-range"] == fake_hub.files[name].validators()[validator]
    assert resumed["status"] == 206
    assert calls[0] == (HALF, len(BODY)) and calls[-1] == (len(BODY), len(BODY))
    assert not list(tmp_path.glob("*.part*"))


@pytest.mark.parametrize("validator", ["ETag", "Last-Modified"])
def test_file_changed_during_an_interruption_comes_whole(fake_hub, tmp_path, validator):
    name = "moving.bin"
    url = interrupted_file(fake_hub, tmp_path, name, etag=validator == "ETag", last_modified=validator == "Last-Modified")
    fake_hub.change_file(name, NEW_BODY)

    local = fetch_url(url, tmp_path)
    assert local.read_bytes() == NEW_BODY  # not BODY[:HALF] + NEW_BODY[HALF:]
    resumed = gets(fake_hub, name)[-1]
    assert "if-range" in resumed["headers"] and resumed["status"] == 200
    # the cache knows it holds the new version: not fetched again
    assert fetch_url(url, tmp_path) == local and len(gets(fake_hub, name)) == 2


def test_a_range_of_another_version_is_refused(fake_hub, tmp_path):
    """A server that ignores If-Range sends a range of the changed file; its ETag gives it away."""
    name = "broken.bin"
    url = interrupted_file(fake_hub, tmp_path, name, if_range=False)
    fake_hub.change_file(name, NEW_BODY)

    assert fetch_url(url, tmp_path).read_bytes() == NEW_BODY
    ranged, whole = gets(fake_hub, name)[-2:]
    assert (ranged["status"], whole["status"]) == (206, 200)
    assert "range" not in whole["headers"]


def test_a_file_changed_after_its_fetch_is_fetched_again(fake_hub, tmp_path):
    name = "daily.jsonl"
    url = fake_hub.add_file(name, BODY)
    local = fetch_url(url, tmp_path)
    fake_hub.change_file(name, NEW_BODY)

    assert fetch_url(url, tmp_path) == local and local.read_bytes() == NEW_BODY
    assert [e["status"] for e in gets(fake_hub, name)] == [200, 200]
    # given the version the caller saw, the cached copy is checked against that one
    fake_hub.change_file(name, BODY)
    assert fetch_url(url, tmp_path, version=probe_url(url)).read_bytes() == BODY
    assert len(gets(fake_hub, name)) == 3


def test_refetch_before_fetches_an_unchanged_file_again(fake_hub, tmp_path):
    name = "same.bin"
    url = fake_hub.add_file(name, BODY)
    fetch_url(url, tmp_path)
    forced = time.time()
    assert fetch_url(url, tmp_path, refetch_before=forced).read_bytes() == BODY
    assert len(gets(fake_hub, name)) == 2
    # fetched since `forced`: the same forced run reading the URL again does not fetch it again
    assert fetch_url(url, tmp_path, refetch_before=forced).read_bytes() == BODY
    assert len(gets(fake_hub, name)) == 2


def test_a_server_without_validators_is_judged_by_size(fake_hub, tmp_path):
    name = "bare.bin"
    url = interrupted_file(fake_hub, tmp_path, name, etag=False, last_modified=False)
    # resumed with no If-Range to send: the 206's total size is checked instead
    assert fetch_url(url, tmp_path).read_bytes() == BODY
    resumed = gets(fake_hub, name)[-1]
    assert resumed["headers"]["range"] == f"bytes={HALF}-" and "if-range" not in resumed["headers"]
    assert resumed["status"] == 206

    assert fetch_url(url, tmp_path).read_bytes() == BODY
    assert len(gets(fake_hub, name)) == 2  # unchanged size: not fetched again
    longer = BODY + b"appended"
    fake_hub.change_file(name, longer)
    assert fetch_url(url, tmp_path).read_bytes() == longer
    assert len(gets(fake_hub, name)) == 3


def test_a_server_without_validators_changed_during_an_interruption(fake_hub, tmp_path):
    name = "bare.bin"
    url = interrupted_file(fake_hub, tmp_path, name, etag=False, last_modified=False)
    longer = NEW_BODY + b"appended"
    fake_hub.change_file(name, longer)

    assert fetch_url(url, tmp_path).read_bytes() == longer
    ranged, whole = gets(fake_hub, name)[-2:]
    assert (ranged["status"], whole["status"]) == (206, 200)  # its total was not the .part's
    assert "range" not in whole["headers"]


def test_a_server_that_refuses_head_is_asked_for_one_byte(fake_hub, tmp_path):
    name = "nohead.bin"
    url = fake_hub.add_file(name, BODY, head=False)
    validators = fake_hub.files[name].validators()
    assert probe_url(url) == UrlVersion(validators["ETag"], validators["Last-Modified"], len(BODY))
    assert gets(fake_hub, name)[-1]["headers"]["range"] == "bytes=0-0"

    fetch_url(url, tmp_path)
    assert fetch_url(url, tmp_path).read_bytes() == BODY
    whole = [e for e in gets(fake_hub, name) if "range" not in e["headers"]]
    assert len(whole) == 1


def test_fetch_url_finishes_a_complete_part_without_downloading(fake_hub, tmp_path):
    name = "whole.txt"
    url = fake_hub.add_file(name, BODY)
    local = fetch_url(url, tmp_path)
    # stopped just before the rename: the whole file and its record still under .part
    part = local.with_name(local.name + ".part")
    local.rename(part)
    meta = local.with_name(local.name + ".meta.json")
    meta.rename(part.with_name(part.name + ".meta.json"))

    assert fetch_url(url, tmp_path).read_bytes() == BODY
    last = gets(fake_hub, name)[-1]
    assert last["headers"]["range"] == f"bytes={len(BODY)}-" and last["status"] == 416


def test_a_part_of_unknown_version_is_not_resumed(fake_hub, tmp_path):
    """A .part without the record of which version it holds (e.g. left by an older nonllama)
    could be a piece of another file: fetched whole rather than spliced."""
    name = "old.txt"
    url = fake_hub.add_file(name, BODY)
    name_in_cache = fetch_url(url, tmp_path / "first").name
    (tmp_path / f"{name_in_cache}.part").write_bytes(b"bytes of who knows what")
    assert fetch_url(url, tmp_path).read_bytes() == BODY
    assert "range" not in gets(fake_hub, name)[-1]["headers"]


def test_fetch_url_restarts_when_the_server_ignores_range(fake_hub, tmp_path):
    name = "norange.txt"
    url = interrupted_file(fake_hub, tmp_path, name, ranges=False)
    assert fetch_url(url, tmp_path).read_bytes() == BODY
    assert gets(fake_hub, name)[-1]["status"] == 200


@pytest.mark.parametrize("call", [fetch_url, probe_url], ids=["fetch_url", "probe_url"])
def test_url_http_error_names_url_and_status(fake_hub, tmp_path, call):
    url = f"{fake_hub.url}/files/missing.jsonl"
    with pytest.raises(SourceError) as excinfo:
        call(url, tmp_path) if call is fetch_url else call(url)
    assert one_line_error(excinfo) == f"HTTP 404 Not Found for {url}"
    assert not list(tmp_path.glob("*.part"))


def test_hub_traffic_stays_on_hf_endpoint(fake_hub, tmp_path):
    """HF_ENDPOINT set after huggingface_hub was imported still decides where requests go."""
    from huggingface_hub import constants

    assert constants.ENDPOINT != fake_hub.url  # imported before the fixture set HF_ENDPOINT
    fake_hub.add_dataset("org/data", {"train.parquet": parquet("x")})
    spec = parse_hub_spec("hf:org/data")
    [(path, revision)] = resolve_hub_files(spec, None)
    fetch_hub_file(spec, path, revision, tmp_path / "hf")
    assert [p for _, p in fake_hub.requests if not p.startswith("/lfs/")] == [
        "/api/datasets/org/data",
        f"/api/datasets/org/data/tree/{revision}",
        f"/datasets/org/data/resolve/{revision}/train.parquet",
    ]


def test_unreachable_endpoint_is_a_one_line_error(fake_hub, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    with pytest.raises(SourceError) as excinfo:
        resolve("hf:org/data")
    message = one_line_error(excinfo)
    assert message.startswith(f"hf:org/data: cannot reach {dead}")
