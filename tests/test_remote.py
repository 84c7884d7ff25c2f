"""Remote sources: `hf:` dataset specs, Hub resolution and fetching, http(s) downloads.

Everything runs against tests/fake_hub.py, a local server speaking the Hub's HTTP API.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nonllama.pipeline.records import SourceError
from nonllama.pipeline.remote import (
    CONVERT_BRANCH,
    HubSpec,
    fetch_hub_file,
    fetch_url,
    parse_hub_spec,
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


def test_fetch_url_downloads_and_caches(fake_hub, tmp_path):
    url = fake_hub.add_file("dump/data.jsonl.gz", BODY) + "?download=true"
    calls = []
    local = fetch_url(url, tmp_path, lambda done, total: calls.append((done, total)))
    assert local.read_bytes() == BODY
    assert local.parent == tmp_path and local.name.endswith("-data.jsonl.gz")
    assert calls[-1] == (len(BODY), len(BODY))
    assert not list(tmp_path.glob("*.part"))

    assert fetch_url(url, tmp_path) == local
    assert fake_hub.hits("/files/dump/data.jsonl.gz") == 1
    # another URL with the same basename gets its own file
    other = fake_hub.add_file("other/data.jsonl.gz", b"other")
    assert fetch_url(other, tmp_path) != local


def test_fetch_url_resumes_a_part_file(fake_hub, tmp_path):
    url = fake_hub.add_file("big.txt", BODY)
    local = fetch_url(url, tmp_path / "first")  # learn the cache name
    part = tmp_path / local.name
    part = part.with_name(part.name + ".part")
    part.write_bytes(BODY[:30_000])

    calls = []
    assert fetch_url(url, tmp_path, lambda d, t: calls.append((d, t))).read_bytes() == BODY
    assert fake_hub.log[-1]["headers"]["range"] == "bytes=30000-"
    assert calls[0] == (30_000, len(BODY)) and calls[-1] == (len(BODY), len(BODY))


def test_fetch_url_finishes_a_complete_part_without_downloading(fake_hub, tmp_path):
    url = fake_hub.add_file("whole.txt", BODY)
    name = fetch_url(url, tmp_path / "first").name
    (tmp_path / f"{name}.part").write_bytes(BODY)  # stopped just before the rename
    assert fetch_url(url, tmp_path).read_bytes() == BODY
    assert fake_hub.log[-1]["headers"]["range"] == f"bytes={len(BODY)}-"  # answered 416


def test_fetch_url_restarts_when_the_server_ignores_range(fake_hub, tmp_path):
    url = fake_hub.add_file("norange.txt", BODY, ranges=False)
    name = fetch_url(url, tmp_path / "first").name
    (tmp_path / f"{name}.part").write_bytes(b"stale bytes")
    assert fetch_url(url, tmp_path).read_bytes() == BODY


def test_fetch_url_interrupted_then_resumed(fake_hub, tmp_path):
    url = fake_hub.add_file("flaky.bin", BODY, cut_at=40_000)
    with pytest.raises(SourceError) as excinfo:
        fetch_url(url, tmp_path)
    message = one_line_error(excinfo)
    assert url in message and "resume" in message
    [part] = tmp_path.glob("*.part")
    assert part.stat().st_size == 40_000 and not list(tmp_path.glob("*-flaky.bin"))

    fake_hub.files["flaky.bin"].cut_at = None  # the network is back
    assert fetch_url(url, tmp_path).read_bytes() == BODY
    assert fake_hub.log[-1]["headers"]["range"] == "bytes=40000-"
    assert not list(tmp_path.glob("*.part"))


def test_fetch_url_http_error_names_url_and_status(fake_hub, tmp_path):
    url = f"{fake_hub.url}/files/missing.jsonl"
    with pytest.raises(SourceError) as excinfo:
        fetch_url(url, tmp_path)
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
