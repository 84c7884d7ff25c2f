"""MinHash / LSH mechanics against datasketch, the reference implementation."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash, MinHashLSH
from datasketch.lsh import _optimal_param

from nonllama.pipeline import minhash

WORDS = [a + b + c for a in "bcdfglmnprst" for b in "aeiou" for c in "klmnrst"]  # 420 words


def _signatures(texts: list[str], ngram: int = 1, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    tokens = minhash.tokenize(pl.Series(texts))
    token_hash, lengths = minhash.token_hashes(tokens, seed)
    shingle_hash, counts = minhash.shingle_hashes(token_hash, lengths, ngram)
    a, b = minhash.permutations(num_perm, seed)
    return minhash.signatures(shingle_hash, counts, a, b)


def _random_pairs(rng: random.Random, n: int) -> list[tuple[list[str], list[str]]]:
    pairs = []
    for _ in range(n):
        first = rng.sample(WORDS, rng.randint(40, 200))
        keep = rng.sample(first, int(len(first) * rng.uniform(0.2, 1.0)))
        second = keep + rng.sample([w for w in WORDS if w not in first], len(first) - len(keep))
        pairs.append((first, second))
    return pairs


def test_tokens_are_words_for_english_and_characters_for_chinese():
    tokens = minhash.tokenize(pl.Series(["Hello, World! In 1998 it rained.", "今天天气很好。", "用 Python 写代码", ""]))
    assert tokens.to_list() == [
        ["hello", "world", "in", "0000", "it", "rained"],
        ["今", "天", "天", "气", "很", "好"],
        ["用", "python", "写", "代", "码"],
        [],
    ]


def test_short_documents_get_one_shingle_and_empty_ones_none():
    tokens = minhash.tokenize(pl.Series(["one two three four", "one two", "", "one two"]))
    token_hash, lengths = minhash.token_hashes(tokens, 1)
    hashes, counts = minhash.shingle_hashes(token_hash, lengths, 3)
    assert counts.tolist() == [2, 1, 0, 1]
    assert hashes[2] == hashes[3]  # same short text, same shingle
    assert hashes[2] not in hashes[:2]  # "one two" is not the 3-gram "one two three"
    sig = _signatures(["one two three four", "", "x"], ngram=3)
    assert (sig[1] == np.uint32(0xFFFFFFFF)).all() and not (sig[2] == np.uint32(0xFFFFFFFF)).all()


def test_jaccard_estimates_agree_with_datasketch():
    rng = random.Random(7)
    pairs = _random_pairs(rng, 300)
    true = np.array([len(set(a) & set(b)) / len(set(a) | set(b)) for a, b in pairs])
    sig = _signatures([" ".join(t) for pair in pairs for t in pair])
    ours = minhash.estimated_jaccard(sig[0::2], sig[1::2])
    reference = []
    for a, b in pairs:
        ma, mb = MinHash(num_perm=128), MinHash(num_perm=128)
        ma.update_batch([w.encode() for w in a])
        mb.update_batch([w.encode() for w in b])
        reference.append(ma.jaccard(mb))
    reference = np.array(reference)
    sd = np.sqrt(true * (1 - true) / 128)  # standard error of a 128-permutation estimate
    # unbiased, with the spread of the estimator; no pair off by more than 4.5 standard errors
    assert abs((ours - true).mean()) < 0.01
    assert np.std(ours - true) < 1.25 * sd.mean()
    assert (np.abs(ours - true) <= 4.5 * sd + 1e-9).all()
    # and as close to datasketch's estimates as two independent estimators can be
    assert abs((ours - reference).mean()) < 0.01
    assert np.std(ours - reference) < 1.5 * np.sqrt(2) * sd.mean()


@pytest.mark.parametrize(("threshold", "num_perm"), [(0.8, 128), (0.5, 64), (0.9, 256), (0.3, 32)])
def test_optimal_bands_match_datasketch(threshold, num_perm):
    assert minhash.optimal_bands(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)
    assert minhash.optimal_bands(threshold, num_perm, 0.1) == _optimal_param(threshold, num_perm, 0.1, 0.9)


def test_lsh_candidates_match_datasketch_minhash_lsh():
    rng = random.Random(3)
    texts = []
    for pair in _random_pairs(rng, 120):
        texts += [" ".join(t) for t in pair]
    sig = _signatures(texts)
    bands, rows = 16, 8
    keys = minhash.band_keys(sig, bands, rows)
    ours = minhash.candidate_pairs(minhash.buckets(keys, np.arange(len(texts))))
    lsh = MinHashLSH(num_perm=128, params=(bands, rows))
    sketches = [MinHash(num_perm=128, hashvalues=s, scheme="affine32") for s in sig]
    for i, m in enumerate(sketches):
        lsh.insert(i, m)
    reference = {(min(i, j), max(i, j)) for i, m in enumerate(sketches) for j in lsh.query(m) if j != i}
    assert len(reference) > 20  # the test pairs do collide
    assert set(ours.iter_rows()) == reference


def test_large_buckets_are_checked_as_star_and_chain():
    keys = np.zeros((6, 1), np.uint64)  # six documents in one bucket
    pairs = minhash.candidate_pairs(minhash.buckets(keys, np.arange(10, 16)), max_bucket=4)
    assert set(pairs.iter_rows()) == {(10, d) for d in range(11, 16)} | {(d, d + 1) for d in range(10, 15)}


def test_connected_components_label_with_the_smallest_member():
    u = np.array([5, 1, 7, 2, 8])
    v = np.array([6, 2, 8, 3, 9])
    labels = minhash.connected_components(11, u, v)
    assert labels.tolist() == [0, 1, 1, 1, 4, 5, 5, 7, 7, 7, 10]
    chain = np.arange(999)
    assert (minhash.connected_components(1000, chain[::-1], chain[::-1] + 1) == 0).all()
