"""MinHash and LSH mechanics for `nonllama dedup`, vectorized over batches of documents.

The path from text to candidate pairs:

1. :func:`simplify` lower-cases, turns punctuation and symbols into spaces and every digit
   into ``0``, so that trivial differences do not change a shingle.
2. :func:`tokenize` cuts the simplified text into tokens that work for both scripts: a run
   of letters and digits between spaces is one token (English words), and every character of
   a script written without spaces (Han, kana, Thai, ...) is a token by itself (Chinese).
   A mixed document gets words for its English and characters for its Chinese.
   :func:`text_features` computes the same tokens' hashes without building a string per token:
   the UTF-8 of the lower-cased batch is decoded to code points in numpy, each code point is
   classified through a table made once by the same regular expressions (so both agree
   exactly), and tokens are runs of code points. It also gives each document's exact key.
3. :func:`shingle_hashes`: tokens are hashed from their code points (:func:`segment_hash`,
   64 bit); an n-gram of tokens is hashed by a polynomial over its token hashes and a 64-bit
   finalizer, in numpy over the whole batch. A document shorter than n tokens is one shingle.
4. :func:`signatures`: ``num_perm`` affine permutations ``a * h + b (mod 2**32)`` (odd ``a``)
   of the 32-bit shingle hashes, minimum per document: one (documents x num_perm) uint32
   matrix per batch, computed in cache-sized blocks with ``np.minimum.reduceat``.
5. :func:`band_keys`: the signature cut into ``bands`` bands of ``rows`` values; each band
   becomes one 64-bit key, salted with the band's number, so keys of different bands never
   meet. Two documents are LSH candidates when they share a key.
6. :func:`candidate_pairs`: one sort of the (key, document) entries, then every pair within
   a bucket (a star and a chain for a large bucket); :class:`UnionFind` clusters the pairs
   the caller confirmed, a block of pairs at a time, in numpy (no loop over documents), with
   memory of one integer per document.

:func:`optimal_bands` picks (bands, rows) the way datasketch's ``MinHashLSH`` does: the pair
that minimizes the integrated false-positive plus false-negative probability for a threshold.
"""

from __future__ import annotations

import functools

import numpy as np
import polars as pl
import pyarrow as pa

# Scripts written without spaces between words: each of their characters is a token.
UNSPACED = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"
TOKEN_PATTERN = rf"[{UNSPACED}]|[^\s{UNSPACED}]+"

MAX_HASH32 = np.uint32(0xFFFFFFFF)
# Shingles x permutations evaluated at once: a 4 MB block stays in cache (3x faster than 32 MB).
BLOCK_CELLS = 1 << 20

_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd: the polynomial keeps token order
_BAND_MULT = np.uint64(0x100000001B3)
_VALUE_MULT = np.uint64(0xD6E8FEB86659FD93)
_POSITION_MULT = np.uint64(0xA0761D6478BD642F)
_LENGTH_MULT = np.uint64(0xE7037ED1A0B428DB)
_EXACT_SALT = 0x6A09E667F3BCC908

# classes of a code point (lower-cased text), as simplify + TOKEN_PATTERN treat it
WORD, SEPARATOR, DIGIT, ALONE = 0, 1, 2, 3  # ALONE: a character of an unspaced script
CLASS_MASK = 3
EXACT_IGNORED = 4  # bit: whitespace or punctuation, left out of the exact key


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: every input bit affects every output bit."""
    x = x ^ (x >> np.uint64(33))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(33))
    x = x * _MIX2
    return x ^ (x >> np.uint64(33))


def _seed64(seed: int, salt: int = 0) -> np.uint64:
    return np.uint64(fmix64(np.array([(seed ^ salt) & 0xFFFFFFFFFFFFFFFF], np.uint64))[0])


def simplify(texts: pl.Series) -> pl.Series:
    """Lower-case; punctuation and symbols become spaces; every digit becomes 0."""
    return (
        texts.fill_null("")
        .str.to_lowercase()
        .str.replace_all(r"[\p{P}\p{S}]+", " ")
        .str.replace_all(r"\d", "0")
    )


def tokenize(texts: pl.Series) -> pl.Series:
    """Simplified texts -> lists of tokens: words for spaced scripts, characters for CJK.

    The reference for :func:`text_features` (which hashes the same tokens without making them)."""
    return simplify(texts).str.extract_all(TOKEN_PATTERN).fill_null([])


# ------------------------------------------------------------------------ code points, hashes


def string_buffers(strings: pl.Series | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes, offsets (n + 1, int64)) of a string column without nulls, zero-copy when it can."""
    arr = strings.to_arrow() if isinstance(strings, pl.Series) else strings
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[arr.offset : arr.offset + len(arr) + 1] if len(arr) else np.zeros(1, np.int64)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return data, offsets


def decode_utf8(data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code points uint32, offsets of each string's code points (n + 1)) of valid UTF-8."""
    data = data[offsets[0] : offsets[-1]]
    offsets = offsets - offsets[0]
    starts = np.flatnonzero((data & 0xC0) != 0x80)  # lead bytes: one per code point
    if len(starts) == len(data):  # all ASCII: nothing to combine
        return data.astype(np.uint32), offsets
    cp_offsets = np.searchsorted(starts, offsets)
    cps = data[starts].astype(np.uint32)
    multi = np.flatnonzero(cps >= 0xC0)
    s = starts[multi]
    lead = cps[multi]
    width = np.where(lead >= 0xF0, 4, np.where(lead >= 0xE0, 3, 2))
    value = lead & np.where(width == 4, 0x07, np.where(width == 3, 0x0F, 0x1F)).astype(np.uint32)
    last = len(data) - 1
    for k in range(1, 4):
        more = width > k
        byte = data[np.minimum(s + k, last)].astype(np.uint32) & 0x3F
        value = np.where(more, (value << 6) | byte, value)
    cps[multi] = value
    return cps, cp_offsets


def _classify(chars: list[str]) -> np.ndarray:
    """The class of each single-character string, by the regular expressions of simplify + tokenize."""
    s = pl.Series(chars, dtype=pl.String)
    punct_symbol = s.str.contains(r"^[\p{P}\p{S}]$").to_numpy()
    digit = s.str.contains(r"^\d$").to_numpy()
    space = s.str.contains(r"^\s$").to_numpy()
    alone = s.str.contains(rf"^[{UNSPACED}]$").to_numpy()
    ignored = s.str.contains(r"^[\s\p{P}]$").to_numpy()
    # the order of simplify: punctuation and symbols become spaces, then digits 0, then tokens
    cls = np.select([punct_symbol, digit, space, alone], [SEPARATOR, DIGIT, SEPARATOR, ALONE], WORD)
    return (cls | np.where(ignored, EXACT_IGNORED, 0)).astype(np.uint8)


@functools.cache
def _bmp_classes() -> np.ndarray:
    """Classes of the 65,536 code points of the Basic Multilingual Plane (~0.1 s, once a process)."""
    return _classify([chr(c) if not 0xD800 <= c < 0xE000 else "a" for c in range(0x10000)])


_ASTRAL: dict[int, int] = {}  # classes of code points above U+FFFF met so far (emoji, rare Han)


def classes(cps: np.ndarray) -> np.ndarray:
    """The class of every code point (see WORD, SEPARATOR, DIGIT, ALONE, EXACT_IGNORED)."""
    table = _bmp_classes()
    out = table[np.minimum(cps, 0xFFFF)]
    astral = cps > 0xFFFF
    if astral.any():
        found = distinct(cps[astral])
        new = [int(c) for c in found if int(c) not in _ASTRAL]
        if new:
            _ASTRAL.update(zip(new, _classify([chr(c) for c in new]).tolist(), strict=True))
        lookup = np.array([_ASTRAL[int(c)] for c in found], np.uint8)
        out[astral] = lookup[np.searchsorted(found, cps[astral])]
    return out


def segment_hash(values: np.ndarray, starts: np.ndarray, seed: np.uint64) -> np.ndarray:
    """A 64-bit hash of each segment ``values[starts[i]:starts[i + 1]]`` (non-empty, in order).

    Each value is mixed with its position in the segment, the mixes are summed, and the sum
    is mixed with the length: order matters, and there is no polynomial structure to collide.
    """
    m = len(values)
    if len(starts) == 0:
        return np.zeros(0, np.uint64)
    lengths = np.diff(np.append(starts, m))
    # position of each value in its segment, from one cumulative sum of segment starts
    step = np.ones(m, np.int64)
    step[starts[1:]] -= lengths[:-1]
    step[0] = 0
    mixed = np.cumsum(step).astype(np.uint64)
    mixed *= _POSITION_MULT
    mixed += values.astype(np.uint64) * _VALUE_MULT
    mixed += seed
    summed = np.add.reduceat(fmix64(mixed), starts)
    return fmix64(summed + lengths.astype(np.uint64) * _LENGTH_MULT)


def distinct(x: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy 2's hashing unique is ~20x slower on 64-bit keys)."""
    x = np.sort(x)
    if len(x) > 1:
        x = x[np.concatenate([[True], x[1:] != x[:-1]])]
    return x


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) parameters of `num_perm` affine permutations of uint32; a is odd (bijective)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def token_hashes(tokens: pl.Series, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint64 hash of every token, number of tokens per document), from token lists
    (:func:`tokenize`); :func:`text_features` gives the same hashes straight from the text."""
    lengths = tokens.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = tokens.explode().drop_nulls()
    if flat.len() == 0:
        return np.zeros(0, np.uint64), lengths
    cps, cp_offsets = decode_utf8(*string_buffers(flat))
    return segment_hash(cps, cp_offsets[:-1], _seed64(seed)), lengths


def text_features(texts: pl.Series, seed: int, exact: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(token hashes, tokens per document, exact keys, has content) of a batch of texts.

    Tokens are those of :func:`tokenize` (hashed as :func:`token_hashes` does). The exact key
    hashes the lower-cased text without whitespace and punctuation; a document with nothing
    else has no content (its key is 0).
    """
    n = texts.len()
    cps, cp_offsets = decode_utf8(*string_buffers(texts.fill_null("").str.to_lowercase()))
    cls = classes(cps)

    keys = np.zeros(n, np.uint64)
    content = np.zeros(n, bool)
    if exact:
        kept = np.flatnonzero((cls & EXACT_IGNORED) == 0)
        first = np.searchsorted(kept, cp_offsets)  # each document's first kept code point
        content = first[1:] > first[:-1]
        if len(kept):
            keys[content] = segment_hash(cps[kept], first[:-1][content], _seed64(seed, _EXACT_SALT))

    kind = cls & CLASS_MASK
    word = kind == WORD
    word |= kind == DIGIT
    in_token = word | (kind == ALONE)
    # a token starts at every character of an unspaced script, and where a run of word
    # characters starts (after a non-word character, or at the start of a document)
    starts_token = in_token.copy()
    starts_token[1:] &= ~(word[1:] & word[:-1])
    doc_starts = cp_offsets[:-1][np.diff(cp_offsets) > 0]
    starts_token[doc_starts] |= word[doc_starts]
    inside = np.flatnonzero(in_token)
    values = cps[inside]
    values[kind[inside] == DIGIT] = ord("0")
    token_starts = np.flatnonzero(starts_token[inside])
    token_hash = segment_hash(values, token_starts, _seed64(seed))
    counted = np.searchsorted(inside[token_starts], cp_offsets)  # tokens before each document's start
    return token_hash, np.diff(counted).astype(np.int64), keys, content


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
    # documents in chunks of about BLOCK_CELLS / num_perm shingles (one cache-sized buffer,
    # reused); a huge document alone in its chunk is handled a block of permutations at a time
    chunk_of = ends // max(1, BLOCK_CELLS // num_perm)
    bounds = np.flatnonzero(np.diff(chunk_of)) + 1
    a_col, b_col = a[:, None], b[:, None]
    buffer = np.empty(BLOCK_CELLS + num_perm * int(counts.max()), np.uint32)
    for docs in np.split(np.arange(len(has)), bounds):
        s0, s1 = int(starts[docs[0]]), int(ends[docs[-1]])
        values = shingle_hash[None, s0:s1]
        width = s1 - s0
        step = max(1, min(num_perm, BLOCK_CELLS // width))
        local = starts[docs] - s0
        for p0 in range(0, num_perm, step):
            p1 = min(num_perm, p0 + step)
            block = buffer[: (p1 - p0) * width].reshape(p1 - p0, width)
            np.multiply(values, a_col[p0:p1], out=block)
            np.add(block, b_col[p0:p1], out=block)
            sig[p0:p1, has[docs]] = np.minimum.reduceat(block, local, axis=1)
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
    """(documents x bands) uint64: each band's `rows` signature values folded into one key.

    Every band starts from its own salt, so equal values in two different bands give two
    different keys: the keys of all bands can be bucketed together.
    """
    n = sig.shape[0]
    cut = sig[:, : bands * rows].reshape(n, bands, rows)
    keys = np.broadcast_to(fmix64(np.arange(1, bands + 1, dtype=np.uint64)), (n, bands)).copy()
    for r in range(rows):
        keys ^= cut[:, :, r].astype(np.uint64)
        keys *= _BAND_MULT
    return fmix64(keys)


def candidate_pairs(keys: np.ndarray, docs: np.ndarray, max_bucket: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), a < b, sorted and distinct: every pair of documents sharing a bucket key.

    `keys[i]` is a band key of document `docs[i]` (any number of bands, keys salted per band;
    entries of one key in increasing document order, as :func:`band_keys` rows come). A bucket
    larger than `max_bucket` contributes its star and its chain (each document with the
    bucket's first and with the one before it) instead of all its pairs.
    """
    empty = np.zeros(0, np.int64)
    if len(keys) < 2:
        return empty, empty
    order = np.argsort(keys, kind="stable")
    key, doc = keys[order], np.asarray(docs, np.int64)[order]
    del order
    new = np.empty(len(key), bool)
    new[0] = True
    np.not_equal(key[1:], key[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(key)))
    keep = sizes > 1
    if not keep.any():
        return empty, empty
    starts, sizes = starts[keep], sizes[keep]
    # only the entries of buckets with two documents or more
    take = np.repeat(starts, sizes) + (np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes))
    doc = doc[take]
    del key, take
    first = np.cumsum(sizes) - sizes  # bucket starts in the compacted entries
    rank = np.arange(len(doc)) - np.repeat(first, sizes)
    size = np.repeat(sizes, sizes)
    small = size <= (max_bucket if max_bucket is not None else len(doc))
    later = np.where(small, size - 1 - rank, 0)  # pairs with each later member of its bucket
    i = np.repeat(np.arange(len(doc)), later)
    j = i + 1 + (np.arange(len(i)) - np.repeat(np.cumsum(later) - later, later))
    a_parts, b_parts = [doc[i]], [doc[j]]
    big = ~small & (rank > 0)
    if big.any():  # star: the bucket's first with every other; chain: each with the one before
        at = np.flatnonzero(big)
        a_parts += [doc[np.repeat(first, sizes)[at]], doc[at - 1]]
        b_parts += [doc[at], doc[at]]
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    return unique_pairs(a, b)


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct pairs (a, b), sorted by a then b."""
    if len(a) == 0:
        return a.astype(np.int64), b.astype(np.int64)
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    keep = np.empty(len(a), bool)
    keep[0] = True
    keep[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[keep].astype(np.int64), b[keep].astype(np.int64)


class UnionFind:
    """Clusters over documents 0..n-1 from blocks of pairs; a cluster's label is its smallest member.

    One integer per document (int32 below 2**31 documents): every link points from a larger
    number to a smaller one, so the root of a cluster is its first document. Pairs are added
    a block at a time (:meth:`union`, all numpy: hooking roots onto the smaller root with
    ``np.minimum.at``, pointer jumping on the touched roots); :meth:`flatten` then points every
    document at its root, a chunk at a time in increasing order (bounded temporary memory).
    """

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)

    def find(self, x: np.ndarray) -> np.ndarray:
        p = self.parent
        r = p[x]
        while True:
            up = p[r]
            if np.array_equal(up, r):
                return r
            r = up

    def union(self, u: np.ndarray, v: np.ndarray) -> None:
        p = self.parent
        u, v = np.asarray(u, p.dtype), np.asarray(v, p.dtype)
        while len(u):
            ru, rv = self.find(u), self.find(v)
            p[u], p[v] = ru, rv  # path compression: straight to the current roots
            differ = ru != rv
            if not differ.any():
                return
            u, v, ru, rv = u[differ], v[differ], ru[differ], rv[differ]
            low, high = np.minimum(ru, rv), np.maximum(ru, rv)
            np.minimum.at(p, high, low)
            touched = distinct(high)
            while True:  # pointer jumping: the touched roots' new parents may have moved on
                up = p[p[touched]]
                if np.array_equal(up, p[touched]):
                    break
                p[touched] = up

    def flatten(self, chunk: int = 1 << 22) -> np.ndarray:
        """Every document's label (its cluster's smallest member), in place; returns the array."""
        p = self.parent
        for lo in range(0, len(p), chunk):
            r = p[lo : lo + chunk]
            while True:  # entries before `lo` already hold roots: one step, or a few within the chunk
                up = p[r]
                if np.array_equal(up, r):
                    break
                r = up
            p[lo : lo + chunk] = r
        return p


def connected_components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Label of every node 0..n-1: the smallest node of its component."""
    uf = UnionFind(n)
    uf.union(u, v)
    return uf.flatten().astype(np.int64)
