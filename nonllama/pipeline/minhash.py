"""MinHash and LSH mechanics for `nonllama dedup`, vectorized over batches of documents.

The path from text to candidate pairs:

1. :func:`simplify` lower-cases, turns punctuation and symbols into spaces and every digit
   into ``0``, so that trivial differences do not change a shingle.
2. :func:`tokenize` cuts the simplified text into tokens that work for both scripts: a run
   of letters and digits between spaces is one token (English words), and every character of
   a script written without spaces (Han, kana, Thai, ...) is a token by itself (Chinese).
   A mixed document gets words for its English and characters for its Chinese.
3. :func:`shingle_hashes`: each distinct token of a batch is hashed once with xxhash (64 bit);
   an n-gram of tokens is hashed by a polynomial over its token hashes and a 64-bit
   finalizer, in numpy over the whole batch. A document shorter than n tokens is one shingle.
4. :func:`signatures`: ``num_perm`` affine permutations ``a * h + b (mod 2**32)`` (odd ``a``)
   of the 32-bit shingle hashes, minimum per document: one (documents x num_perm) uint32
   matrix per batch, computed in blocks of bounded size with ``np.minimum.reduceat``.
5. :func:`band_keys`: the signature cut into ``bands`` bands of ``rows`` values; each band
   becomes one 64-bit key. Two documents are LSH candidates when they share a key in some band.
6. :func:`candidate_pairs`: sorts, group-bys and a self-join in polars over the
   (band, key, document) table; :func:`connected_components` clusters the pairs the caller
   confirmed, with vectorized min-label propagation (union-find without a loop over nodes).

:func:`optimal_bands` picks (bands, rows) the way datasketch's ``MinHashLSH`` does: the pair
that minimizes the integrated false-positive plus false-negative probability for a threshold.
"""

from __future__ import annotations

import functools

import numpy as np
import polars as pl
import xxhash

# Scripts written without spaces between words: each of their characters is a token.
UNSPACED = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"
TOKEN_PATTERN = rf"[{UNSPACED}]|[^\s{UNSPACED}]+"

MAX_HASH32 = np.uint32(0xFFFFFFFF)
# Shingles x permutations evaluated at once: bounds the temporary matrix to ~32 MB.
BLOCK_CELLS = 1 << 23

_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd: the polynomial keeps token order
_BAND_MULT = np.uint64(0x100000001B3)


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: every input bit affects every output bit."""
    x = x ^ (x >> np.uint64(33))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(33))
    x = x * _MIX2
    return x ^ (x >> np.uint64(33))


def simplify(texts: pl.Series) -> pl.Series:
    """Lower-case; punctuation and symbols become spaces; every digit becomes 0."""
    return (
        texts.fill_null("")
        .str.to_lowercase()
        .str.replace_all(r"[\p{P}\p{S}]+", " ")
        .str.replace_all(r"\d", "0")
    )


def tokenize(texts: pl.Series) -> pl.Series:
    """Simplified texts -> lists of tokens: words for spaced scripts, characters for CJK."""
    return simplify(texts).str.extract_all(TOKEN_PATTERN).fill_null([])


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) parameters of `num_perm` affine permutations of uint32; a is odd (bijective)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def token_hashes(tokens: pl.Series, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint64 hash of every token, number of tokens per document).

    Each distinct token of the batch is hashed once (xxh3, 64 bit); a batch's vocabulary is
    far smaller than its token count, so the Python call per hash is paid per word type.
    """
    lengths = tokens.list.len().to_numpy().astype(np.int64)
    flat = tokens.explode().drop_nulls()
    if flat.len() == 0:
        return np.zeros(0, np.uint64), lengths
    vocabulary = flat.unique()
    hashes = pl.Series(
        [xxhash.xxh3_64_intdigest(t.encode(), seed) for t in vocabulary.to_list()], dtype=pl.UInt64
    )
    return flat.replace_strict(vocabulary, hashes, return_dtype=pl.UInt64).to_numpy(), lengths


def shingle_hashes(
    token_hash: np.ndarray, lengths: np.ndarray, ngram: int
) -> tuple[np.ndarray, np.ndarray]:
    """(uint32 hash of every token n-gram, number of shingles per document).

    A document with 1..n-1 tokens is one shingle (all its tokens); one with none has none.
    """
    counts = np.where(lengths > 0, np.maximum(lengths - ngram + 1, 1), 0)
    total = int(counts.sum())
    doc_start = np.cumsum(lengths) - lengths
    # first token of every shingle: the document's start + 0, 1, ..., count - 1
    first = np.repeat(doc_start - (np.cumsum(counts) - counts), counts) + np.arange(total)
    # the n-gram hash at every token position of the batch, from shifted slices (no gather);
    # only positions whose n-gram stays inside its document are picked
    padded = np.concatenate([token_hash, np.zeros(ngram, np.uint64)])
    n_tokens = len(token_hash)
    h = np.zeros(n_tokens, np.uint64)
    for k in range(ngram):
        h = h * _NGRAM_MULT + padded[k : k + n_tokens]
    h = h[first] if total else np.zeros(0, np.uint64)
    short = np.flatnonzero((lengths > 0) & (lengths < ngram))
    if len(short):  # a document shorter than n: one shingle of its tokens, nothing beyond
        at = (np.cumsum(counts) - counts)[short]
        h[at] = 0
        for k in range(ngram - 1):
            inside = k < lengths[short]
            h[at] = h[at] * _NGRAM_MULT + np.where(inside, padded[doc_start[short] + k], 0).astype(np.uint64)
        h[at] *= _NGRAM_MULT  # the same degree as a full n-gram
    return (fmix64(h) >> np.uint64(32)).astype(np.uint32), counts


def signatures(
    shingle_hash: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """MinHash signatures, (documents x len(a)) uint32; a document without shingles is all 2**32-1."""
    n_docs, num_perm = len(counts), len(a)
    # permutations x shingles: each permutation's values lie contiguous in memory, so the
    # per-document minimum (reduceat along the last axis) streams (10x faster than shingles x perms)
    sig = np.full((num_perm, n_docs), MAX_HASH32, dtype=np.uint32)
    has = np.flatnonzero(counts)
    if len(has) == 0:
        return sig.T.copy()
    ends = np.cumsum(counts[has])
    starts = ends - counts[has]
    # documents in chunks of about BLOCK_CELLS / num_perm shingles; a huge document alone
    # in its chunk is handled a block of permutations at a time
    chunk_of = ends // max(1, BLOCK_CELLS // num_perm)
    bounds = np.flatnonzero(np.diff(chunk_of)) + 1
    a_col, b_col = a[:, None], b[:, None]
    for docs in np.split(np.arange(len(has)), bounds):
        s0, s1 = int(starts[docs[0]]), int(ends[docs[-1]])
        values = shingle_hash[None, s0:s1]
        step = max(1, BLOCK_CELLS // max(1, s1 - s0))
        for p0 in range(0, num_perm, step):
            permuted = values * a_col[p0 : p0 + step]
            permuted += b_col[p0 : p0 + step]
            sig[p0 : p0 + step, has[docs]] = np.minimum.reduceat(permuted, starts[docs] - s0, axis=1)
    return np.ascontiguousarray(sig.T)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Share of equal signature values, row by row: the MinHash estimate of Jaccard."""
    return (sig_a == sig_b).mean(axis=-1)


# --------------------------------------------------------------------------------------- LSH


def _false_positive_area(threshold: float, bands: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return _integrate(lambda s: 1 - (1 - s**rows) ** bands, 0.0, threshold)


def _false_negative_area(threshold: float, bands: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return _integrate(lambda s: (1 - s**rows) ** bands, threshold, 1.0)


def _integrate(f, lo: float, hi: float, points: int = 2001) -> np.ndarray:
    """Simpson's rule on a fine grid, for every (bands, rows) pair at once."""
    s = np.linspace(lo, hi, points)[:, None]
    y = f(s)
    h = (hi - lo) / (points - 1)
    return h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum(axis=0) + 2 * y[2:-1:2].sum(axis=0))


@functools.cache  # ~0.1 s of numpy: computed once per process, not once per part
def optimal_bands(
    threshold: float, num_perm: int, false_positive_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows), bands * rows <= num_perm, minimizing weighted false positives + negatives.

    The probability that two documents of Jaccard s share a band is 1 - (1 - s**r)**b; its
    area below the threshold counts false positives, the area of its complement above it
    false negatives (the criterion of datasketch's MinHashLSH, evaluated for every pair at once).
    """
    pairs = np.array(
        [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=float
    )
    bands, rows = pairs[:, 0], pairs[:, 1]
    error = false_positive_weight * _false_positive_area(threshold, bands, rows) + (
        1 - false_positive_weight
    ) * _false_negative_area(threshold, bands, rows)
    best = int(np.argmin(error))  # the first minimum, in datasketch's (b, r) order
    return int(bands[best]), int(rows[best])


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(documents x bands) uint64: each band's `rows` signature values folded into one key."""
    keys = np.zeros((sig.shape[0], bands), np.uint64)
    for band in range(bands):
        key = np.zeros(sig.shape[0], np.uint64)
        for col in sig[:, band * rows : (band + 1) * rows].T:
            key = (key ^ col.astype(np.uint64)) * _BAND_MULT
        keys[:, band] = fmix64(key)
    return keys


def buckets(keys: np.ndarray, docs: np.ndarray) -> pl.DataFrame:
    """The LSH buckets with at least two documents: rows (band, key, doc), sorted.

    `keys` is (documents x bands) for the documents numbered `docs`.
    """
    n, bands = keys.shape
    table = pl.DataFrame(
        {
            "band": np.repeat(np.arange(bands, dtype=np.uint16)[None, :], n, axis=0).ravel(),
            "key": keys.ravel(),
            "doc": np.repeat(docs.astype(np.int64), bands),
        }
    )
    return (
        table.filter(pl.len().over("band", "key") > 1)
        .sort("band", "key", "doc")
    )


def candidate_pairs(bucketed: pl.DataFrame, max_bucket: int | None = None) -> pl.DataFrame:
    """Every pair (a < b) of documents sharing a bucket in some band: what LSH proposes.

    A bucket larger than `max_bucket` contributes its star and its chain (each document with
    the bucket's first and with the one before it) instead of all its pairs.
    """
    sized = bucketed.with_columns(
        size=pl.len().over("band", "key"), rank=pl.int_range(pl.len()).over("band", "key")
    )
    small = sized if max_bucket is None else sized.filter(pl.col("size") <= max_bucket)
    pairs = (
        small.join(small, on=["band", "key"], suffix="_b")
        .filter(pl.col("doc") < pl.col("doc_b"))
        .select(a="doc", b="doc_b")
    )
    if max_bucket is not None:
        large = sized.filter(pl.col("size") > max_bucket).with_columns(
            first=pl.col("doc").first().over("band", "key"),
            previous=pl.col("doc").shift(1).over("band", "key"),
        )
        pairs = pl.concat(
            [
                pairs,
                large.filter(pl.col("rank") > 0).select(a="first", b="doc"),
                large.filter(pl.col("rank") > 1).select(a="previous", b="doc"),
            ]
        )
    return pairs.unique().sort("a", "b")


def connected_components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Label of every node 0..n-1: the smallest node of its component.

    Min-label propagation over the edges, with pointer jumping (label of the label) after
    each round, so a chain of length L settles in O(log L) rounds, all in numpy.
    """
    labels = np.arange(n, dtype=np.int64)
    if len(u) == 0:
        return labels
    u, v = np.asarray(u, np.int64), np.asarray(v, np.int64)
    while True:
        low = np.minimum(labels[u], labels[v])
        updated = labels.copy()
        np.minimum.at(updated, u, low)
        np.minimum.at(updated, v, low)
        while True:  # pointer jumping: a label's label is smaller still, same component
            jumped = updated[updated]
            if np.array_equal(jumped, updated):
                break
            updated = jumped
        if np.array_equal(updated, labels):
            return labels
        labels = updated
