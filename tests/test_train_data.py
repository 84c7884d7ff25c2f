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
    WindowSampler,
    eval_starts,
    get_batch,
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


def write_packed(directory, ids: np.ndarray, dtype: str, **manifest) -> None:
    directory.mkdir(parents=True)
    ids.astype(dtype).tofile(directory / "train.bin")
    ids[:50].astype(dtype).tofile(directory / "val.bin")
    meta = {"dtype": dtype, "vocab_size": int(ids.max()) + 1, "tokenizer_digest": "sha256:x",
            "tokens": {"train": len(ids), "val": 50}, **manifest}
    (directory / "_manifest.json").write_text(json.dumps(meta))


def test_packed_data_reads_uint32_and_batches_shift_by_one(tmp_path) -> None:
    tokens = np.arange(70_000, 70_500, dtype=np.int64)  # ids beyond uint16
    write_packed(tmp_path / "packed", tokens, "uint32")
    data = PackedData(tmp_path / "packed")
    assert data.vocab_size == 70_500 and data.train.dtype == np.uint32 and len(data.val) == 50
    x, y = get_batch(data.train, [0, 100], 10, torch.device("cpu"))
    assert x.dtype == torch.int64 and x.shape == (2, 10)
    assert x[1, 0].item() == 70_100 and torch.equal(x[:, 1:], y[:, :-1])


def test_packed_data_errors_name_the_file_and_the_stage(tmp_path) -> None:
    with pytest.raises(StageError, match=r"_manifest.json not found: run `nonllama pack`"):
        PackedData(tmp_path / "nothing")
    write_packed(tmp_path / "packed", np.arange(100), "uint16", tokens={"train": 99, "val": 50})
    with pytest.raises(StageError, match=r"train.bin holds 100 tokens, its manifest says 99"):
        PackedData(tmp_path / "packed")
