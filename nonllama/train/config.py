"""The training config: every option of `nonllama train`, its default, and how layers combine.

Precedence, lowest first: the defaults below, the config saved in the checkpoint (with
--resume), the `[train]` table of a TOML file (--config), the options on the command line.
The effective config is written to `<out>/config.toml`; passing that file back with
--config reproduces the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nonllama.pipeline import stages

if TYPE_CHECKING:
    from nonllama.model import ModelConfig

SCHEDULES = ("cosine", "wsd", "constant")
DTYPES = ("auto", "fp32", "bf16", "fp16")
DEFAULT_MAX_STEPS = 1000

# What a resumed run cannot change: the shapes of the weights and of the windows it reads.
LOCKED_ON_RESUME = ("preset", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim",
                    "tie_embeddings", "seq_len")


@dataclass
class TrainConfig:
    data: str = "work/packed"  # the packed/ directory of `nonllama pack`
    out: str = "work/runs/15m"
    # model: a preset, any dimension overridden
    preset: str = "15m"
    dim: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    hidden_dim: int | None = None
    tie_embeddings: bool = True
    # batch: batch_size windows of seq_len tokens per process and micro-step
    seq_len: int = 256
    batch_size: int = 16
    grad_accum: int = 1
    # optimizer and schedule
    lr: float = 5e-4
    min_lr: float = 5e-5
    warmup: int = 100
    schedule: str = "cosine"
    decay_frac: float = 0.2  # wsd: the share of steps spent decaying at the end
    weight_decay: float = 0.1
    clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    max_steps: int | None = None  # one of these two; neither means DEFAULT_MAX_STEPS
    max_tokens: int | None = None
    # evaluation, checkpoints, numerics
    eval_every: int = 100
    eval_batches: int = 20
    save_every: int = 500
    keep: int = 3
    dtype: str = "auto"  # bf16 where the device computes in it natively (see train.perf.native_bf16), else fp32
    compile: bool | None = None  # None: auto, compiled once the first steps show that it pays (train.perf)
    peak_flops: float | None = None  # one device's peak FLOP/s in the dtype, for MFU (default: known GPUs, measured CPUs)
    seed: int = 1337
    max_bad_steps: int = 5  # steps in a row with a non-finite loss or gradient norm that stop the run
    stop_at: int | None = None  # stop (with a checkpoint) at this step; the schedule still spans max_steps

    def check(self) -> None:
        """Raise ValueError naming the option for values training cannot use."""
        from nonllama.model import PRESETS  # torch: imported when needed, not by `nonllama --help`

        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r}: unknown; choose one of {', '.join(PRESETS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        for name in ("seq_len", "batch_size", "grad_accum", "eval_every", "eval_batches",
                     "save_every", "keep", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{option(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "max_tokens", "stop_at"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{option(name)} must be at least 1, got {value}")
        if self.max_steps is not None and self.max_tokens is not None:
            raise ValueError("--max-steps and --max-tokens both set; give one")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"--min-lr {self.min_lr} must lie between 0 and --lr {self.lr}")
        for name in ("warmup", "weight_decay", "clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{option(name)} must not be negative, got {getattr(self, name)}")
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise ValueError(f"--peak-flops must be positive, got {self.peak_flops}")
        if not 0 < self.decay_frac <= 1:
            raise ValueError(f"--decay-frac must lie in (0, 1], got {self.decay_frac}")
        self.model_config(vocab_size=2).check()

    def model_config(self, vocab_size: int) -> ModelConfig:
        from nonllama.model import preset_config

        overrides = {k: getattr(self, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim")
                     if getattr(self, k) is not None}
        if "n_heads" in overrides and "n_kv_heads" not in overrides:
            overrides["n_kv_heads"] = overrides["n_heads"]  # no grouping unless asked
        return preset_config(self.preset, vocab_size=vocab_size, max_seq_len=self.seq_len,
                             tie_embeddings=self.tie_embeddings, **overrides)

    def tokens_per_step(self, world_size: int) -> int:
        return self.seq_len * self.batch_size * self.grad_accum * world_size

    def total_steps(self, world_size: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        if self.max_tokens is not None:
            per_step = self.tokens_per_step(world_size)
            return max(1, -(-self.max_tokens // per_step))
        return DEFAULT_MAX_STEPS

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def merge(layers: list[tuple[str, dict[str, Any]]]) -> TrainConfig:
    """Apply each (where, values) layer over the defaults; unknown keys and wrong types are
    errors that say where the value came from."""
    values = TrainConfig().to_dict()
    for where, layer in layers:
        for key, value in layer.items():
            if value is None:
                continue
            key = key.replace("-", "_")
            if key not in values:
                raise ValueError(f"{where}: unknown training option {key!r}")
            values[key] = _coerce(key, value, where)
            if key == "max_steps":  # a layer that sets one budget replaces the other
                values["max_tokens"] = None
            elif key == "max_tokens":
                values["max_steps"] = None
    config = TrainConfig(**values)
    config.check()
    return config


def _coerce(key: str, value: Any, where: str) -> Any:
    kind = FIELD_TYPES[key]
    try:
        if "bool" in kind:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if "int" in kind:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if "float" in kind:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key} = {value!r} is not a valid {kind}") from None


def locked_differences(resumed: TrainConfig, wanted: TrainConfig) -> list[str]:
    return [
        f"{option(k)} {getattr(wanted, k)} differs from the checkpoint's {getattr(resumed, k)}"
        for k in LOCKED_ON_RESUME
        if getattr(resumed, k) != getattr(wanted, k)
    ]


def to_toml(config: TrainConfig) -> str:
    """The `[train]` table of a TOML file (None values, which TOML cannot hold, left out)."""
    lines = ["[train]"]
    for key, value in config.to_dict().items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        else:
            text = repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def default_out(workdir: Path, name: str) -> str:
    return str(Path(workdir) / stages.RUNS_DIR / name)


def resolve(file_values: dict[str, Any], cli_values: dict[str, Any], *, workdir: Path,
            name: str | None, resume: bool) -> TrainConfig:
    """The effective config: defaults < the resumed checkpoint's < --config's < the command line's.

    --data and --out default to <workdir>/packed and <workdir>/runs/<name or preset>. On
    --resume the shapes in LOCKED_ON_RESUME and --dtype must agree with the checkpoint's;
    anything else (more steps, another eval cadence) may change.
    """
    layers = [("--config [train]", file_values), ("command line", cli_values)]
    given = merge(layers)
    workdir_defaults = {"data": str(stages.directory(workdir, "pack")), "out": default_out(workdir, name or given.preset)}
    layers.insert(0, ("defaults", workdir_defaults))
    config = merge(layers)
    if not resume:
        return config
    from nonllama.train.checkpoint import latest_checkpoint, load_checkpoint

    checkpoint = latest_checkpoint(Path(config.out))
    if checkpoint is None:
        raise ValueError(f"--resume: no checkpoint in {Path(config.out) / 'checkpoints'}")
    saved = dict(load_checkpoint(checkpoint)["config"])
    saved.pop("stop_at", None)  # where the last invocation stopped is not where this one should
    resumed = merge([("defaults", workdir_defaults), (str(checkpoint), saved), *layers[1:]])
    started_with = saved.get("dtype", resumed.dtype)
    if resumed.dtype != started_with:
        # the grad scaler's state exists for fp16 alone, and another precision would continue
        # another run than the one the checkpoint's metrics describe
        raise ValueError(f"run {config.out} was started with --dtype {started_with}; resume it with --dtype "
                         f"{started_with} (or leave --dtype out), or start a new run with --dtype "
                         f"{resumed.dtype} and another --out")
    problems = locked_differences(TrainConfig(**{**saved, "stop_at": None}), resumed)
    if problems:
        raise ValueError(f"{'; '.join(problems)} ({checkpoint}): a resumed run keeps its model and --seq-len")
    return resumed
