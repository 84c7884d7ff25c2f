"""The filter's `perplexity` rule: how surprised a reference language model is by each document.

A model trained on clean text finds other clean text predictable and spam, shuffled words,
boilerplate or another language surprising. Two kinds of model, one interface
(`score(texts) -> (perplexity, bits_per_byte)`, NaN for a document with nothing to score):

- `RunScorer`: a run `nonllama train` wrote (a small model the user trained on a clean
  source). Each document is scored as BOS + its tokens (EOS is not scored): perplexity is
  exp(mean NLL) over its text tokens, bits per byte is the summed NLL / ln 2 / the UTF-8 bytes
  of its text. Perplexity per token depends on the tokenizer; bits per byte does not.
- `KenLMScorer`: an n-gram model (ARPA or KenLM binary) with SentencePiece pre-tokenization,
  as CCNet does it (cc_net/perplexity.py): each line normalized (`ccnet_normalize`), encoded to
  pieces joined by spaces, scored by `model.score(line)` in log10; a line counts its pieces + 1
  (the end of sentence); perplexity = 10 ** (-sum log10 / sum length).

Models are loaded once per worker process (`scorer`: a cache keyed by the files' paths, sizes
and modification times), not once per batch. `ModelFiles` says which files a filter run uses;
its digests go into the stage's `dependencies`, so a retrained reference makes the filter rerun.

Buckets (CCNet's head / middle / tail) need the corpus's quantiles per source: tasks return
histograms of log(perplexity) on fixed fine bins (`LogHistogram`), the driver sums them and
takes the cut points from the sums (`cut_bins`), so its memory does not grow with the corpus.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nonllama.pipeline.executors import torch_threads
from nonllama.pipeline.io import StageError

KENLM_HINT = "pip install -e '.[kenlm]'"
# CCNet's seed threshold for its English KenLM model (Wenzek et al. 2020; also used by
# datatrove's and RedPajama's CCNet-style filters); a nonllama run has no such scale
KENLM_MAX_PERPLEXITY = 1400.0
# logits of one scoring batch take tokens x vocabulary x 4 bytes: at most this many bytes
MAX_LOGITS_BYTES = 1 << 28
BUCKET_NAMES = ("head", "middle", "tail")


# ------------------------------------------------------------------------------- which files


@dataclass(frozen=True)
class ModelFiles:
    """The files a filter run scores with, resolved once by the driver (so every worker uses
    the checkpoint the manifest's digests describe, even if training writes a newer one)."""

    kind: str  # "run" or "kenlm"
    model: str  # the run's checkpoint, or the KenLM file
    tokenizer: str  # the run's tokenizer.model, or the SentencePiece model
    threads: int = 1  # torch threads of a worker (run only)
    batch_tokens: int = 4096  # padded tokens per forward pass (run only)


def default_sp_model(kenlm_model: Path) -> Path:
    """CCNet's layout: `en.arpa.bin` has its SentencePiece model beside it as `en.sp.model`."""
    return kenlm_model.parent / f"{kenlm_model.name.split('.')[0]}.sp.model"


def resolve_run(run: Path, option: str = "--perplexity-run") -> tuple[Path, Path]:
    """(the run's latest checkpoint, its tokenizer.model); FileNotFoundError naming `option`."""
    from nonllama.generate import find_checkpoint
    from nonllama.pipeline.tokenizer import MODEL_NAME

    _, checkpoint = find_checkpoint(run, None, option=option)
    tokenizer = run / MODEL_NAME
    if not tokenizer.is_file():
        raise FileNotFoundError(f"{option} {run}: no {MODEL_NAME} in it (train copies the tokenizer there)")
    return checkpoint, tokenizer


def resolve_kenlm(model: Path, tokenizer: Path | None) -> tuple[Path, Path]:
    """(the KenLM file, its SentencePiece model); errors name the options."""
    if not model.is_file():
        raise FileNotFoundError(f"--perplexity-model {model}: no such file (a KenLM .arpa or .bin model)")
    if tokenizer is None:
        sp = default_sp_model(model)
        if not sp.is_file():
            raise FileNotFoundError(f"--perplexity-model {model}: no SentencePiece model {sp.name} beside it "
                                    "(CCNet's layout); give it with --perplexity-tokenizer")
        return model, sp
    if not tokenizer.is_file():
        raise FileNotFoundError(f"--perplexity-tokenizer {tokenizer}: no such file (a SentencePiece model)")
    return model, tokenizer


def require_kenlm() -> Any:
    try:
        import kenlm
    except ImportError:
        raise StageError(f"--perplexity-model needs the kenlm package: {KENLM_HINT}") from None
    return kenlm


# ------------------------------------------------------------------------------- the scorers


class RunScorer:
    """A nonllama run: the model of one checkpoint and the tokenizer it was trained with."""

    def __init__(self, files: ModelFiles):
        import torch

        from nonllama.generate import load_run

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.loaded = load_run(Path(files.model).parent.parent, checkpoint=files.model,
                               tokenizer=Path(files.tokenizer), device=self.device)
        self.threads = files.threads
        vocab = self.loaded.config.vocab_size
        self.batch_tokens = max(1, min(files.batch_tokens, MAX_LOGITS_BYTES // (4 * vocab)))

    def windows(self, ids: Sequence[Sequence[int]]) -> list[tuple[int, list[int], int]]:
        """Every document's token sequences to run the model on: (document, tokens, how many
        of the first targets were already scored by the window before).

        A document is BOS + its tokens, and its targets are the tokens after BOS. One that does
        not fit in the context (max_seq_len, the --seq-len the run trained with: the model has
        never seen a later position) is cut into windows of the context's length that overlap
        by half: each window after the first re-reads the previous window's second half as
        context and scores only the targets after it, so every target but the first half-window's
        is predicted from at least half a context of text (plain non-overlapping windows would
        restart each window from nothing and overstate the perplexity of long documents).
        """
        from nonllama.pipeline.tokenizer import BOS_ID

        context = self.loaded.config.max_seq_len
        stride = max(1, context // 2)
        out = []
        for doc, text_ids in enumerate(ids):
            if not len(text_ids):
                continue
            tokens = [BOS_ID, *text_ids]
            # inputs tokens[s : s + context] predict tokens[s + 1 : s + context + 1]
            start, scored_to = 0, 0  # targets up to index `scored_to` (in tokens) are done
            while True:
                end = min(start + context, len(tokens) - 1)
                window = tokens[start:end + 1]  # inputs and the last target
                out.append((doc, window, scored_to - start if scored_to > start else 0))
                scored_to = end
                if end >= len(tokens) - 1:
                    break
                start += stride
        return out

    def score(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        import torch
        import torch.nn.functional as F

        from nonllama.pipeline.tokenizer import PAD_ID, encode_texts

        n = len(texts)
        nll = np.zeros(n)
        counted = np.zeros(n, dtype=np.int64)
        ids = encode_texts(self.loaded.processor, list(texts))
        windows = self.windows(ids)
        # longest first, so that a batch's padding is small; ties in document order (the same
        # batches every run: the batch's shape can change the last bits of the logits)
        order = sorted(range(len(windows)), key=lambda i: (-len(windows[i][1]), i))
        model = self.loaded.model
        with torch_threads(self.threads), torch.inference_mode():
            i = 0
            while i < len(order):
                longest = len(windows[order[i]][1]) - 1
                rows = max(1, self.batch_tokens // longest)
                batch = [windows[j] for j in order[i:i + rows]]
                i += rows
                # right padding: causal attention never lets a real position see a pad
                grid = torch.full((len(batch), longest + 1), PAD_ID, dtype=torch.long)
                for r, (_, window, _) in enumerate(batch):
                    grid[r, :len(window)] = torch.tensor(window)
                grid = grid.to(self.device)
                logits, _ = model(grid[:, :-1])
                losses = F.cross_entropy(logits.float().transpose(1, 2), grid[:, 1:], reduction="none").cpu().numpy()
                for r, (doc, window, skip) in enumerate(batch):
                    scored = losses[r, skip:len(window) - 1].astype(np.float64)
                    nll[doc] += scored.sum()
                    counted[doc] += len(scored)
        nbytes = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            perplexity = np.where(counted > 0, np.exp(nll / np.maximum(counted, 1)), np.nan)
            bits = np.where(counted > 0, nll / math.log(2) / nbytes, np.nan)
        return perplexity, bits


# CCNet's text_normalizer.normalize (accents, case, digits, unicode punctuation, non-printing
# characters), which its KenLM models were trained on: the same text must be scored the same way
UNICODE_PUNCT = {
    "，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"',
    "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!",
    "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'",
    "…": "...", "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]", "％": "%", "►": "-",
}  # fmt: skip
_PUNCT_TABLE = str.maketrans(UNICODE_PUNCT)
_DIGIT = re.compile(r"\d")
_NON_PRINTING = re.compile("[" + "".join(map(chr, [*range(0, 32), *range(127, 160)])) + "]")


def ccnet_normalize(line: str) -> str:
    """A line as CCNet's KenLM models saw their training text: stripped, lowercase, accents
    stripped, every digit 0, unicode punctuation as ASCII, non-printing characters removed."""
    line = line.strip()
    if not line:
        return line
    line = line.lower()
    line = "".join(c for c in unicodedata.normalize("NFD", line) if unicodedata.category(c) != "Mn")
    line = _DIGIT.sub("0", line)
    line = line.translate(_PUNCT_TABLE)
    return _NON_PRINTING.sub("", line)


class KenLMScorer:
    """A KenLM n-gram model over SentencePiece pieces, as CCNet scores documents."""

    def __init__(self, files: ModelFiles):
        from nonllama.pipeline.tokenizer import load_processor

        kenlm = require_kenlm()
        try:
            self.model = kenlm.Model(files.model)
        except (OSError, RuntimeError) as e:
            raise StageError(f"--perplexity-model {files.model}: not a KenLM model ({' '.join(str(e).split())[:200]})") from None
        self.processor = load_processor(Path(files.tokenizer))

    def score(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        n = len(texts)
        log10 = np.zeros(n)
        length = np.zeros(n, dtype=np.int64)
        # Blank lines are not scored (CCNet scores them as an empty sentence, "</s>" alone, so
        # a document's perplexity would depend on how many blank lines separate its paragraphs).
        lines = [(doc, norm) for doc, text in enumerate(texts) for line in text.split("\n")
                 if (norm := ccnet_normalize(line))]
        pieces = self.processor.encode([line for _, line in lines], out_type=str)
        for (doc, _), line_pieces in zip(lines, pieces, strict=True):
            sentence = " ".join(line_pieces)
            log10[doc] += self.model.score(sentence)  # with <s> and </s>, as CCNet
            length[doc] += len(sentence.split()) + 1
        nbytes = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            perplexity = np.where(length > 0, 10.0 ** (-log10 / np.maximum(length, 1)), np.nan)
            bits = np.where(length > 0, -log10 * math.log2(10) / nbytes, np.nan)
        return perplexity, bits


_SCORERS: dict[tuple, RunScorer | KenLMScorer] = {}


def scorer(files: ModelFiles) -> RunScorer | KenLMScorer:
    """The scorer of `files`, loaded once per process (again only if a file changes)."""
    stamps = tuple((p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in (files.model, files.tokenizer))
    key = (files, stamps)
    if key not in _SCORERS:
        _SCORERS.clear()  # one model at a time: a worker that moves on to another frees the last
        _SCORERS[key] = (RunScorer if files.kind == "run" else KenLMScorer)(files)
    return _SCORERS[key]


# ------------------------------------------------------------------------------- buckets

# log(perplexity) from 0 (perplexity 1) to 30 (1e13) in steps of 0.001: a cut point is placed
# within 0.1% of the perplexity where the exact quantile lies, and a source's histogram is at
# most 30,000 counts, whatever the corpus
LOG_LOW, LOG_HIGH, LOG_STEP = 0.0, 30.0, 0.001
LOG_BINS = round((LOG_HIGH - LOG_LOW) / LOG_STEP)


def log_bins(perplexity: np.ndarray) -> np.ndarray:
    """The bin of each perplexity (finite, > 0); values past the ends go to the end bins."""
    b = np.floor((np.log(perplexity) - LOG_LOW) / LOG_STEP)
    return np.clip(b, 0, LOG_BINS - 1).astype(np.int64)


def bin_edge(b: int) -> float:
    """The perplexity at the upper edge of bin `b`."""
    return float(math.exp(LOG_LOW + (b + 1) * LOG_STEP))


@dataclass
class LogHistogram:
    """Per source, a sparse histogram of log(perplexity): (bins holding a document, counts)."""

    sources: dict[str, tuple[np.ndarray, np.ndarray]]

    @staticmethod
    def of(sources: np.ndarray, perplexity: np.ndarray) -> LogHistogram:
        ok = np.isfinite(perplexity) & (perplexity > 0)
        out = {}
        for source in np.unique(sources[ok]):
            bins, counts = np.unique(log_bins(perplexity[ok & (sources == source)]), return_counts=True)
            out[str(source)] = (bins, counts)
        return LogHistogram(out)


def merge_histograms(parts: Sequence[LogHistogram]) -> dict[str, np.ndarray]:
    """Per source, the dense histogram summed over parts (the driver's only per-source state)."""
    total: dict[str, np.ndarray] = {}
    for h in parts:
        for source, (bins, counts) in h.sources.items():
            np.add.at(total.setdefault(source, np.zeros(LOG_BINS, np.int64)), bins, counts)
    return dict(sorted(total.items()))


def cut_bins(histogram: np.ndarray, quantiles: Sequence[float]) -> list[int]:
    """For each quantile q, the bin where the count below and in it first reaches q of the
    documents: a document in that bin or below is under the cut."""
    cumulative = np.cumsum(histogram)
    n = int(cumulative[-1])
    return [int(np.searchsorted(cumulative, q * n, side="left")) for q in quantiles]


def bucket_of(perplexity: np.ndarray, cuts: Sequence[int]) -> np.ndarray:
    """head / middle / tail per document from its bin and the cut bins (None: no perplexity), as
    an object array."""
    ok = np.isfinite(perplexity) & (perplexity > 0)
    bins = log_bins(np.where(ok, perplexity, 1.0))
    index = np.searchsorted(np.asarray(cuts), bins, side="left")  # bins <= cut[0] -> 0
    names = np.array([*BUCKET_NAMES, None], dtype=object)
    return names[np.where(ok, index, len(BUCKET_NAMES))]
