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
    a, b = minhash.candidate_pairs(keys.ravel(), np.repeat(np.arange(len(texts)), bands))
    ours = set(zip(a.tolist(), b.tolist(), strict=True))
    lsh = MinHashLSH(num_perm=128, params=(bands, rows))
    sketches = [MinHash(num_perm=128, hashvalues=s, scheme="affine32") for s in sig]
    for i, m in enumerate(sketches):
        lsh.insert(i, m)
    reference = {(min(i, j), max(i, j)) for i, m in enumerate(sketches) for j in lsh.query(m) if j != i}
    assert len(reference) > 20  # the test pairs do collide
    assert ours == reference
    # the same pairs whatever the order the bands' entries come in, as long as each key's
    # entries come in document order (the lsh tasks read their bands from every part)
    order = np.argsort(keys.T.ravel(), kind="stable")
    a2, b2 = minhash.candidate_pairs(keys.T.ravel()[order], np.tile(np.arange(len(texts)), bands)[order])
    assert set(zip(a2.tolist(), b2.tolist(), strict=True)) == ours


def test_large_buckets_are_checked_as_star_and_chain():
    keys = np.zeros(6, np.uint64)  # six documents in one bucket
    a, b = minhash.candidate_pairs(keys, np.arange(10, 16), max_bucket=4)
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == {(10, d) for d in range(11, 16)} | {(d, d + 1) for d in range(10, 15)}
    a, b = minhash.candidate_pairs(np.array([7, 9, 7, 9, 7], np.uint64), np.arange(5))  # all pairs of small buckets
    assert list(zip(a.tolist(), b.tolist(), strict=True)) == [(0, 2), (0, 4), (1, 3), (2, 4)]


def test_band_keys_differ_between_bands():
    sig = np.zeros((3, 8), np.uint32)  # every band holds the same values
    keys = minhash.band_keys(sig, 4, 2)
    assert len(set(keys[0].tolist())) == 4 and (keys == keys[0]).all()


def test_connected_components_label_with_the_smallest_member():
    u = np.array([5, 1, 7, 2, 8])
    v = np.array([6, 2, 8, 3, 9])
    labels = minhash.connected_components(11, u, v)
    assert labels.tolist() == [0, 1, 1, 1, 4, 5, 5, 7, 7, 7, 10]
    chain = np.arange(999)
    assert (minhash.connected_components(1000, chain[::-1], chain[::-1] + 1) == 0).all()


def test_union_find_in_blocks_matches_one_pass_and_a_reference():
    rng = np.random.default_rng(5)
    n = 5000
    u, v = rng.integers(0, n, 3000), rng.integers(0, n, 3000)
    reference = np.arange(n)  # plain union-find with a Python loop
    def root(x):
        while reference[x] != x:
            x = reference[x]
        return x
    for a, b in zip(u.tolist(), v.tolist(), strict=True):
        ra, rb = root(a), root(b)
        reference[max(ra, rb)] = min(ra, rb)
    expected = np.array([root(x) for x in range(n)])
    uf = minhash.UnionFind(n)
    for lo in range(0, len(u), 700):  # pairs arrive a block at a time, as the driver streams them
        uf.union(u[lo : lo + 700], v[lo : lo + 700])
    assert uf.parent.dtype == np.int32
    assert (uf.flatten(chunk=1000) == expected).all()
    assert (minhash.connected_components(n, u, v) == expected).all()


def test_text_features_hash_the_tokens_of_tokenize():
    texts = pl.Series([
        "Hello, World! In 1998 it rained.", "今天天气很好。", "用 Python 写代码", "", None,
        "１９９８年 ๑๒๓ thai ภาษาไทย", "emoji 😀😀 x𠀀y 𠀁", "İstanbul ǅ ß straße", "a\u0301b  \t\n c",
        "¥€$ 100% done", "ー カタカナ ひらがな", "mixed中文and English词", "  ", "!!!", "3.14159",
    ])
    tokens = minhash.tokenize(texts)
    reference, lengths = minhash.token_hashes(tokens, 7)
    token_hash, token_lengths, keys, content = minhash.text_features(texts, 7)
    assert token_lengths.tolist() == lengths.tolist() == tokens.list.len().to_list()
    assert (token_hash == reference).all()
    assert len(set(reference.tolist())) == len(set(tokens.explode().drop_nulls().to_list()))
    # exact keys: case, whitespace and punctuation ignored; symbols and digits count
    light = texts.fill_null("").str.to_lowercase().str.replace_all(r"[\s\p{P}]+", "")
    assert content.tolist() == (light.str.len_bytes() > 0).to_list()
    same = minhash.text_features(pl.Series(["The  Cat, sat!", "the cat sat", "the cat sat 2", "the cat sat $"]), 7)[2]
    assert same[0] == same[1] and len(set(same.tolist())) == 3
