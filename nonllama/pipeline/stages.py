"""The funnel's stages, in order: written once, read by the CLI, the driver, `report` and `train`.

    download -> normalize -> filter -> dedup -> train-tokenizer -> pack -> train
      raw/       normalized/   filtered/  deduped/   tokenizer/       packed/   runs/<name>/
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StageInfo:
    name: str  # the command: `nonllama <name>`
    directory: str  # its output under the work directory
    reads: str | None  # the stage whose output it reads by default
    documents: bool  # writes document parts (id, text, source, ...) that a later stage may read


FUNNEL: tuple[StageInfo, ...] = (
    StageInfo("download", "raw", None, True),
    StageInfo("normalize", "normalized", "download", True),
    StageInfo("filter", "filtered", "normalize", True),
    StageInfo("dedup", "deduped", "filter", True),
    StageInfo("train-tokenizer", "tokenizer", "dedup", False),
    StageInfo("pack", "packed", "dedup", False),
)
BY_NAME = {stage.name: stage for stage in FUNNEL}
DOCUMENT_STAGES: tuple[str, ...] = tuple(stage.name for stage in FUNNEL if stage.documents)
RUNS_DIR = "runs"  # train's runs, under the work directory


def stage(name: str) -> StageInfo:
    return BY_NAME[name]


def directory(workdir: Path, name: str) -> Path:
    """Where stage `name` writes under `workdir` (and the next stage reads by default)."""
    return Path(workdir) / BY_NAME[name].directory


def stages_before(name: str) -> tuple[str, ...]:
    """The document stages whose output `name` may read: any before it in the funnel (the
    ablation of the funnel packs download's output directly), never its own or a later one."""
    if name in DOCUMENT_STAGES:
        return DOCUMENT_STAGES[: DOCUMENT_STAGES.index(name)]
    return DOCUMENT_STAGES
