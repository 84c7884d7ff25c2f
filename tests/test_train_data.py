"""The window sampler and the packed-data reader of `nonllama train`."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import torch

from nonllama.pipeline.io import StageError
from nonllama.train.data import (
    FeistelPermutation,
    PackedData,
    ShardedTokens,
    WindowSampler,
    eval_starts,
    get_batch,
    write_packed,
)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097])
def test_feistel_is_a_permutation(n: int) -> None:
    perm = FeistelPermutation(n, key=12345)
    assert sorted(perm(i) for i in range(n)) == list(range(n))


def test_feistel_shuffles_and_depends_on_the_key() -> None:
    a = [FeistelPermutation(1000, key=1)(i) for i in range(1000)]
    b = [FeistelPermutation(1000, key=2)(i) for i in range(1000)]
    assert a != b
    assert sum(x == i for i, x in enumerate(a)) < 20  # not near the identity


def draw_epoch(seed: int, world: int, batch: int, steps: int, n_tokens: int, seq_len: int) -> list[list[int]]:
    """What each rank reads over `steps` micro-steps (each rank has its own sampler, as in DDP)."""
    samplers = [WindowSampler(n_tokens, seq_len, seed) for _ in range(world)]
    return [[s for _ in range(steps) for s in samplers[r].next_starts(batch, r, world)] for r in range(world)]


def test_windows_cover_an_epoch_once_and_ranks_never_overlap() -> None:
    seq_len, n_windows = 8, 240
    n_tokens = n_windows * seq_len + 1
    rank0, rank1 = draw_epoch(seed=7, world=2, batch=4, steps=n_windows // 8, n_tokens=n_tokens, seq_len=seq_len)
    assert not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == [i * seq_len for i in range(n_windows)]  # every window, none twice
    assert all(s + seq_len + 1 <= n_tokens for s in rank0 + rank1)


def test_two_ranks_read_what_one_rank_reads_with_twice_the_accumulation() -> None:
    one = draw_epoch(seed=3, world=1, batch=4, steps=20, n_tokens=10_000, seq_len=16)[0]
    two = draw_epoch(seed=3, world=2, batch=4, steps=10, n_tokens=10_000, seq_len=16)
    # micro-step m of rank r on 2 ranks = micro-step 2m + r on one
    interleaved = [s for m in range(10) for r in range(2) for s in two[r][4 * m:4 * m + 4]]
    assert interleaved == one


def test_each_epoch_reshuffles() -> None:
    sampler = WindowSampler(n_tokens=100 * 4 + 1, seq_len=4, seed=0)
    first = sampler.next_starts(100)
    second = sampler.next_starts(100)
    assert sorted(first) == sorted(second) and first != second
    assert sampler.epoch == 2


def test_resumed_sampler_continues_the_same_order() -> None:
    straight = WindowSampler(5_000, 16, seed=11)
    expected = [straight.next_starts(8) for _ in range(50)]
    before = WindowSampler(5_000, 16, seed=11)
    got = [before.next_starts(8) for _ in range(20)]
    after = WindowSampler(5_000, 16, seed=11)
    after.load_state_dict(json.loads(json.dumps(before.state_dict())))  # survives serialisation
    got += [after.next_starts(8) for _ in range(30)]
    assert got == expected
    with pytest.raises(StageError, match="--seed"):
        WindowSampler(5_000, 16, seed=12).load_state_dict(before.state_dict())


def test_memory_does_not_grow_with_a_billion_windows() -> None:
    seq_len = 256
    tracemalloc.start()
    sampler = WindowSampler(n_tokens=10**9 * seq_len + 1, seq_len=seq_len, seed=5)
    starts = [s for _ in range(100) for s in sampler.next_starts(32)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sampler.n_windows == 10**9
    assert peak < 256 * 1024  # a few objects, not a table of 10^9 positions
    assert len(set(starts)) == len(starts)
    assert all(s % seq_len == 0 and 0 <= s < 10**9 * seq_len for s in starts)
    assert len(json.dumps(sampler.state_dict())) < 100


def test_eval_windows_are_fixed_and_distinct() -> None:
    assert eval_starts(1_000, 10, 20) == eval_starts(1_000, 10, 20)
    assert len(set(eval_starts(1_000, 10, 20))) == 20
    assert len(eval_starts(101, 10, 50)) == 10  # all there are, none repeated


def write_tokens(directory, ids: np.ndarray, dtype: str, cuts: tuple[int, ...] = ()) -> dict:
    """`ids` as the train split in shards cut at `cuts`, its first 50 as val."""
    return write_packed(directory, {"train": np.split(ids, list(cuts)), "val": [ids[:50]]}, int(ids.max()) + 1,
                        dtype=dtype)


def edit_manifest(directory, change) -> None:
    manifest = json.loads((directory / "_manifest.json").read_text())
    change(manifest)
    (directory / "_manifest.json").write_text(json.dumps(manifest))


def test_packed_data_reads_uint32_and_batches_shift_by_one(tmp_path) -> None:
    tokens = np.arange(70_000, 70_500, dtype=np.int64)  # ids beyond uint16
    write_tokens(tmp_path / "packed", tokens, "uint32")
    data = PackedData(tmp_path / "packed")
    assert data.vocab_size == 70_500 and data.train.dtype == np.uint32 and len(data.val) == 50
    x, y = get_batch(data.train, [0, 100], 10, torch.device("cpu"))
    assert x.dtype == torch.int64 and x.shape == (2, 10)
    assert x[1, 0].item() == 70_100 and torch.equal(x[:, 1:], y[:, :-1])


def test_windows_across_shard_boundaries_read_the_stream(tmp_path, monkeypatch) -> None:
    """Shards are one stream: every window, across boundaries and empty shards, is the slice of
    the concatenated tokens; so the batches are those of one file, whatever the cuts."""
    tokens = np.arange(1_000, dtype=np.int64)
    write_tokens(tmp_path / "one", tokens, "uint16")
    write_tokens(tmp_path / "many", tokens, "uint16", cuts=(7, 7, 300, 301, 999))  # an empty shard and 1-token ones
    monkeypatch.setattr(ShardedTokens, "MAX_OPEN", 2)  # maps closed and reopened as windows move on
    one, many = PackedData(tmp_path / "one").train, PackedData(tmp_path / "many").train
    assert len(many) == len(one) == 1_000 and len(many.paths) == 5  # the empty shard is not mapped
    assert [many.locate(p) for p in (0, 6, 7, 299, 300, 301, 998, 999)] == [
        (0, 0), (0, 6), (1, 0), (1, 292), (2, 0), (3, 0), (3, 697), (4, 0)]
    for start in range(0, 1_000, 3):
        for length in (1, 2, 9, 400):
            assert np.array_equal(many[start:start + length], tokens[start:start + length])
    assert many[-1] == 999 and many[300] == 300 and len(many._maps) <= 2
    sampler_one, sampler_many = WindowSampler(len(one), 16, 3), WindowSampler(len(many), 16, 3)
    for _ in range(20):
        x1, y1 = get_batch(one, sampler_one.next_starts(4), 16, torch.device("cpu"))
        x2, y2 = get_batch(many, sampler_many.next_starts(4), 16, torch.device("cpu"))
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_verify_checks_every_shard(tmp_path) -> None:
    write_tokens(tmp_path / "packed", np.arange(1_000), "uint16", cuts=(400, 700))
    PackedData(tmp_path / "packed").verify()
    shard = tmp_path / "packed" / "train-00002.bin"
    tokens = np.fromfile(shard, dtype=np.uint16)
    tokens[5] += 1  # same size, other tokens: only the checksum tells
    tokens.tofile(shard)
    data = PackedData(tmp_path / "packed")
    with pytest.raises(StageError, match=r"train-00002.bin: its sha256 differs .* rerun `nonllama pack --force`"):
        data.verify()


def test_packed_data_errors_name_the_file_and_the_stage(tmp_path) -> None:
    with pytest.raises(StageError, match=r"_manifest.json not found: run `nonllama pack`"):
        PackedData(tmp_path / "nothing")
    write_tokens(tmp_path / "packed", np.arange(100), "uint16", cuts=(60,))
    edit_manifest(tmp_path / "packed", lambda m: m["shards"]["train"][1].update(tokens=39))
    with pytest.raises(StageError, match=r"shards hold 99 tokens, its tokens say 100"):
        PackedData(tmp_path / "packed")
    edit_manifest(tmp_path / "packed", lambda m: m["tokens"].update(train=99))
    with pytest.raises(StageError, match=r"train-00001.bin holds 40 tokens, its manifest says 39"):
        PackedData(tmp_path / "packed")
    edit_manifest(tmp_path / "packed", lambda m: m["shards"]["train"][1].update(tokens=40, name="../x.bin"))
    with pytest.raises(StageError, match=r"train shard 1 is named '../x.bin'"):
        PackedData(tmp_path / "packed")
    (tmp_path / "packed" / "train-00000.bin").unlink()
    edit_manifest(tmp_path / "packed", lambda m: (m["shards"]["train"][1].update(name="train-00001.bin"),
                                                  m["tokens"].update(train=100)))
    with pytest.raises(StageError, match=r"train-00000.bin not found: rerun `nonllama pack --force`"):
        PackedData(tmp_path / "packed")


def test_the_layout_before_shards_is_refused(tmp_path) -> None:
    """One train.bin and val.bin, as pack wrote them before shards: rerun pack."""
    old = tmp_path / "packed"
    old.mkdir()
    np.arange(100, dtype=np.uint16).tofile(old / "train.bin")
    np.arange(10, dtype=np.uint16).tofile(old / "val.bin")
    (old / "_manifest.json").write_text(json.dumps({
        "stage": "pack", "dtype": "uint16", "vocab_size": 100, "tokens": {"train": 100, "val": 10},
        "files": {"train.bin": "0" * 64, "val.bin": "0" * 64}}))
    with pytest.raises(StageError, match=r"layout before shards \(one train.bin and val.bin\): rerun `nonllama pack`"):
        PackedData(old)


def test_the_tokenizer_is_the_one_the_manifest_names(tmp_path) -> None:
    model = tmp_path / "tok" / "tokenizer.model"
    model.parent.mkdir()
    model.write_bytes(b"a model")
    write_packed(tmp_path / "packed", {"train": [np.arange(100)], "val": [np.arange(10)]}, 100, tokenizer=model)
    data = PackedData(tmp_path / "packed")
    assert data.manifest["tokenizer"]["dir"] == "../tok" and data.tokenizer_model() == (model, "")
    model.write_bytes(b"another model")
    found, problem = data.tokenizer_model()
    assert found is None and "changed since" in problem
    model.unlink()
    assert "not found" in data.tokenizer_model()[1]
    write_packed(tmp_path / "bare", {"train": [np.arange(100)]}, 100)
    assert PackedData(tmp_path / "bare").tokenizer_model() == (None, "")  # none named: no guess
