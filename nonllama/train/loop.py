"""The training loop: one process of `nonllama train`, alone or as one rank of N.

    train(config) -> for each step: grad_accum micro-batches (forward, backward), average
    the loss over ranks, skip the step if it is not finite, clip, skip the step if the gradient
    norm is not finite, AdamW, schedule; log metrics; every eval_every steps evaluate on the val
    shards; every save_every steps write a checkpoint (never of weights that are not finite).

The data is a packed/ directory (every target counts) or the chat windows of `nonllama sft`
(`masked`: only the targets the loss mask keeps count, the others are IGNORE_INDEX; the run
starts from the base run's weights). With a mask, the loss of a step is the mean over every
counted target of the step, whatever micro-batch and rank holds it: each micro-batch's mean is
weighted by its share of the step's counted targets (counted on every rank before the first
forward), so N processes equal one with --grad-accum N here too.

Under `torch.distributed.run` (RANK, WORLD_SIZE, LOCAL_RANK set) the model is wrapped in
DistributedDataParallel, NCCL on GPUs, gloo on CPU; rank 0 alone writes files and prints.

Speed (nonllama.train.perf): bf16 autocast where the device computes in it natively
(`--dtype auto`); torch.compile from the start with --compile, or with `--compile auto` (the
default) from the third step on when the steps left, at the second step's time, would save
more than compiling costs; one host synchronisation per step (the loss and the gradient norm
read together; fp16's grad scaler adds its own); the next step's batches read and copied to
the GPU while the current step computes; MFU logged with every step.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from nonllama import __version__
from nonllama.model import Llama, ModelConfig
from nonllama.pipeline.io import StageError, atomic_write_text
from nonllama.train.checkpoint import (
    CHECKPOINT_DIR,
    check_finite_weights,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from nonllama.train.config import TrainConfig, to_toml
from nonllama.train.data import IGNORE_INDEX, PackedData, open_data
from nonllama.train.launch import LAUNCHED_ENV
from nonllama.train.metrics import METRICS_NAME, PLOT_NAME, SAMPLES_NAME, plot_losses
from nonllama.train.perf import (
    COMPILE_DECIDE_AFTER,
    Peak,
    compile_pays,
    device_peak,
    flops_per_token,
    native_bf16,
)


@dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """Join the process group torch.distributed.run set up for us (if any) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1:
        if device.type == "cpu":  # share the cores out, or N processes x all cores thrash
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_world))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, local_rank, world_size, device)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """--dtype: "auto" is bf16 where the device computes in it natively (`native_bf16`), else fp32."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def lr_at(step: int, config: TrainConfig, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then the schedule."""
    if step < config.warmup:
        return config.lr * (step + 1) / (config.warmup + 1)
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "wsd":  # warmup, stable, then a linear decay over the last decay_frac
        decay_start = max(config.warmup, total_steps - round(config.decay_frac * total_steps))
        if step < decay_start:
            return config.lr
        progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
        return config.lr - progress * (config.lr - config.min_lr)
    progress = min(1.0, (step - config.warmup) / max(1, total_steps - config.warmup))
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def prepare_run(config: TrainConfig, resume: bool) -> Path | None:
    """Check that `config.out` suits --resume (or its absence); return the checkpoint to resume."""
    out = Path(config.out)
    found = latest_checkpoint(out)
    if resume and found is None:
        raise StageError(f"--resume: no checkpoint in {out / CHECKPOINT_DIR}")
    if not resume and found is not None:
        raise StageError(f"--out {out} already holds checkpoints: pass --resume to continue that run, or choose another --out")
    return found


# Options that may change between invocations of one run without making it another run.
RUN_CONTROL = ("stop_at", "keep", "data", "out", "compile", "peak_flops")
# What a run directory holds besides config.toml: all of it belongs to one run.
RUN_OUTPUTS = (CHECKPOINT_DIR, METRICS_NAME, PLOT_NAME, "tensorboard", SAMPLES_NAME)


@dataclass
class AutoDecision:
    action: str  # "start", "resume", "up_to_date" or "restart"
    reason: str = ""


def decide_auto_resume(config: TrainConfig, world_size: int) -> AutoDecision:
    """What `--auto-resume` (make's mode) does with the run in `config.out`.

    No checkpoint: start. The latest checkpoint has the same config (RUN_CONTROL aside), the
    same packed data (its digest) and the same number of processes: resume it, or, if it
    reached the last step, nothing is to be done. Anything else changed: the run is another
    one, and starts over.
    """
    found = latest_checkpoint(Path(config.out))
    if found is None:
        return AutoDecision("start")
    state = load_checkpoint(found)
    saved, asked = dict(state.get("config", {})), config.to_dict()
    changed = [f"{k} {saved.get(k)!r} -> {asked[k]!r}" for k in asked
               if k not in RUN_CONTROL and saved.get(k) != asked[k]]
    data = open_data(Path(config.data))
    if state.get("data_digest") != data.digest:
        changed.append(f"the tokens in {config.data}")
    else:
        changed += model_differences(state, config.model_config(data.vocab_size))
    if state.get("world_size", 1) != world_size:
        changed.append(f"processes {state.get('world_size', 1)} -> {world_size}")
    if changed:
        return AutoDecision("restart", ", ".join(changed))
    if state["step"] >= config.total_steps(world_size):
        return AutoDecision("up_to_date", f"step {state['step']:,} of {config.total_steps(world_size):,}")
    return AutoDecision("resume", f"from step {state['step']:,}")


def model_differences(state: dict, model_config: ModelConfig) -> list[str]:
    """How the model a checkpoint holds differs from `model_config`: its fields that differ,
    the feed-forward width compared as the size it comes to (hidden_dim, or multiple_of's rounding)."""
    if "model_config" not in state:
        return []

    def shape(config: ModelConfig) -> dict:
        return {**asdict(config), "hidden_dim": config.ffn_dim, "multiple_of": None}

    saved, wanted = shape(ModelConfig(**state["model_config"])), shape(model_config)
    return [f"{k} {saved[k]!r} -> {wanted[k]!r}" for k in wanted if saved[k] != wanted[k]]


def check_same_model(checkpoint: Path, state: dict, model_config: ModelConfig) -> None:
    """Raise StageError when the options now make another model than the checkpoint holds, as
    they do when a preset changed since the run started (the 260k preset gained llama2.c's
    multiple_of 4, hidden size 172 instead of 192)."""
    differences = model_differences(state, model_config)
    if differences:
        raise StageError(f"{checkpoint} holds another model than the options now make ({', '.join(differences)}), "
                         "as when its preset changed since the run started: start a new run with another --out")


def clear_run(out: Path) -> None:
    """Remove what a previous run left in `out` (checkpoints, metrics, plot, events, samples)."""
    for name in RUN_OUTPUTS:
        path = Path(out) / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


@torch.no_grad()
def evaluate(model: Llama, data: PackedData, config: TrainConfig, ranks: Distributed,
             dtype: torch.dtype) -> dict[str, float]:
    """Loss, perplexity, top-1 and top-5 next-token accuracy on a fixed set of validation windows,
    split over the ranks and summed back (over the targets that count: all of them in packed
    data, the assistant's in chat windows)."""
    starts = data.eval_starts(config.seq_len, config.eval_batches * config.batch_size)
    mine = starts[ranks.rank::ranks.world_size]
    sums = torch.zeros(4, dtype=torch.float64, device=ranks.device)  # loss, top-1, top-5, targets
    model.eval()
    for i in range(0, len(mine), config.batch_size):
        x, y = data.batch("val", mine[i:i + config.batch_size], config.seq_len, ranks.device)
        with autocast(ranks.device, dtype):
            logits, _ = model(x)
        logits = logits.float()
        top5 = logits.topk(min(5, logits.size(-1)), dim=-1).indices
        sums[0] += F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        sums[1] += (top5[..., 0] == y).sum()
        sums[2] += (top5 == y.unsqueeze(-1)).any(-1).sum()
        sums[3] += (y != IGNORE_INDEX).sum()  # an ignored target matches no logit
    model.train()
    if ranks.world_size > 1:
        dist.all_reduce(sums)
    loss = (sums[0] / sums[3]).item()
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)),
            "val_top1": (sums[1] / sums[3]).item(), "val_top5": (sums[2] / sums[3]).item()}


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train(config: TrainConfig, resume: bool = False, console: Console | None = None) -> dict:
    """Run (or continue) the training `config` describes; return a summary of the last step."""
    ranks = setup_distributed()
    try:
        summary = _train(config, resume, ranks, console or Console(stderr=True))
        if ranks.world_size > 1:
            # ranks leave together: a gloo rank that tears its group down while rank 0 still
            # writes the last checkpoint sometimes aborts ("terminate called without an active
            # exception", exit -6), which failed the whole run after it had finished
            dist.barrier()
        return summary
    finally:
        if ranks.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, resume: bool, ranks: Distributed, console: Console) -> dict:
    out = Path(config.out)
    checkpoint = prepare_run(config, resume)
    data = open_data(Path(config.data))
    if os.environ.get(LAUNCHED_ENV) != "1":  # `nonllama train --nproc N` checked them before it launched
        data.verify()
    state = load_checkpoint(checkpoint) if checkpoint is not None else None
    if state is not None and state.get("tokenizer_digest") != data.tokenizer_digest:
        raise StageError(f"{checkpoint} was trained on tokens of another tokenizer than {data.dir}: "
                         f"digest {state.get('tokenizer_digest')} vs {data.tokenizer_digest}")
    device, dtype = ranks.device, resolve_dtype(config.dtype, ranks.device)
    if device.type == "cuda":  # float32 matrix products on TF32 tensor cores
        torch.set_float32_matmul_precision("high")
    total_steps = config.total_steps(ranks.world_size)
    stop = min(total_steps, config.stop_at or total_steps)
    tokens_per_step = config.tokens_per_step(ranks.world_size)

    # the same seed on every rank: identical initial weights (DDP checks they agree)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    model_config = config.model_config(data.vocab_size)
    if state is not None:
        check_same_model(checkpoint, state, model_config)
    model = Llama(model_config).to(device)
    optimizer = model.configure_optimizer(config.lr, config.weight_decay, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    sampler = data.sampler(config.seq_len, config.seed)
    step, tokens_seen, skipped, bad_streak = 0, 0, 0, 0
    initial = data.initial_weights() if state is None else None
    if initial is not None:  # sft: a new run starts from the base run's weights
        model.load_state_dict(initial)
        del initial
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        step, tokens_seen = state["step"], state["tokens_seen"]
        skipped, bad_streak = state["skipped_steps"], state["bad_streak"]
        del state
    steps = TrainingSteps(model)
    if config.compile:
        steps.compile()
    trained = steps
    if ranks.world_size > 1:
        # the rotary tables are the only buffers, the same on every rank: nothing to broadcast
        trained = torch.nn.parallel.DistributedDataParallel(
            steps, device_ids=[ranks.local_rank] if device.type == "cuda" else None, broadcast_buffers=False)
    can_eval = data.can_eval(config.seq_len)
    flops_per_step = flops_per_token(model_config, config.seq_len) * tokens_per_step
    peak = device_peak(device, dtype, config.peak_flops) if ranks.is_main else None

    log = RunLog(out, config, resumed_at=step if checkpoint is not None else None, enabled=ranks.is_main)
    if ranks.is_main:
        log.start(data, model.num_params(), dtype, ranks, total_steps, console, peak)
        if not can_eval:
            console.print(f"[yellow]warning:[/] {data.no_eval_warning(config.seq_len)}", highlight=False)

    def snapshot() -> dict:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step, "tokens_seen": tokens_seen, "skipped_steps": skipped, "bad_streak": bad_streak,
            "rng": rng_state(), "sampler": sampler_state,
            "config": config.to_dict(), "model_config": asdict(model_config),
            "tokenizer_digest": data.tokenizer_digest, "data_digest": data.digest,
            "world_size": ranks.world_size, "version": __version__,
        }

    def save() -> None:
        """A checkpoint of the current step; every rank checks the weights (the same under DDP)
        first, so that all of them stop together when they are not finite."""
        check_finite_weights(out, step, model.state_dict())
        if ranks.is_main:
            save_checkpoint(out, step, snapshot(), config.keep)

    last: dict = {}
    saved_at = step if checkpoint is not None else -1
    # the sampler where the steps done so far leave it (a checkpoint's), before the batches read ahead
    sampler_state = sampler.state_dict()
    ahead: list[tuple[torch.Tensor, torch.Tensor]] = []
    first_step = step
    with log.progress(total_steps, step, console) as advance:
        while step < stop:
            started = time.perf_counter()
            # the schedule is a function of the step alone: nothing more to checkpoint for it
            lr = lr_at(step, config, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = ahead or step_batches(data, sampler, config, ranks)
            sampler_state = sampler.state_dict()
            loss_sum = torch.zeros((), device=device)
            # masked data: each micro-batch weighed by its share of the step's counted targets
            counted, step_counted = counted_targets(batches, ranks) if data.masked else (None, None)
            for micro, (x, y) in enumerate(batches):
                # gradients are averaged over ranks only once, after the last micro-batch
                last_micro = micro == config.grad_accum - 1
                sync = nullcontext() if ranks.world_size == 1 or last_micro else trained.no_sync()
                with sync:
                    with autocast(device, dtype):
                        _, loss = trained(x, y)
                    if counted is not None:  # DDP averages over ranks: world_size undoes that
                        scaler.scale(loss * (counted[micro] * ranks.world_size / step_counted)).backward()
                    else:
                        scaler.scale(loss / config.grad_accum).backward()
                loss_sum += loss.detach() * counted[micro] if counted is not None else loss.detach()
            if ranks.world_size > 1:
                dist.all_reduce(loss_sum)
            loss_mean = loss_sum / (step_counted if counted is not None else config.grad_accum * ranks.world_size)
            scaler.unscale_(optimizer)
            # the gradients are all-reduced already: every rank gets the same norm, and so takes
            # the same decision below
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip or math.inf)
            # the next step's batches, read (and on a GPU copied) while this one computes
            ahead = step_batches(data, sampler, config, ranks) if step + 1 < stop else []
            # the step's one host synchronisation: the loss and the gradient norm together
            loss_value, grad_norm = torch.stack([loss_mean.float(), norm.float()]).tolist()
            problem, scaler_overflow = "", False
            if not math.isfinite(loss_value):
                grad_norm, problem = math.nan, f"loss {loss_value}"
                if scaler.is_enabled():  # fp16: forget this step's gradients, keep the scale
                    scaler.update(scaler.get_scale())
            else:
                if math.isfinite(grad_norm):
                    scaler.step(optimizer)
                else:
                    problem = f"gradient norm {grad_norm}"
                    # fp16: at a scale above 1 an overflow is the grad scaler's calibration, which
                    # update() answers by halving the scale; only below that are the gradients bad
                    scaler_overflow = scaler.is_enabled() and scaler.get_scale() > 1.0
                scaler.update()
            if not problem:
                bad_streak = 0
            else:  # a bad batch or a spike: keep the weights, count it, stop if it persists
                skipped += 1
                bad_streak += 0 if scaler_overflow else 1
                if bad_streak >= config.max_bad_steps:
                    raise StageError(
                        f"loss or gradient norm not finite for {bad_streak} steps in a row, the last at "
                        f"step {step + 1} ({problem}): lower --lr, raise --warmup, or try --dtype fp32")
                if ranks.is_main:
                    console.print(f"[yellow]train[/]: step {step + 1} skipped, {problem}: the weights are "
                                  f"left as they were ({skipped} skipped so far)", highlight=False)
            optimizer.zero_grad(set_to_none=True)  # a skipped step's gradients go too
            step += 1
            tokens_seen += tokens_per_step
            elapsed = time.perf_counter() - started
            last = {"step": step, "tokens": tokens_seen, "loss": loss_value, "lr": lr,
                    "grad_norm": grad_norm, "skipped": skipped, "tokens_per_s": tokens_per_step / elapsed}
            if peak is not None:
                last["mfu"] = flops_per_step / elapsed / (peak.flops * ranks.world_size)
            log.train(last)
            advance(last)
            if config.compile is None and step - first_step == COMPILE_DECIDE_AFTER and step < stop:
                decide_compile(steps, stop - step, elapsed, dtype, ranks, console)
            # on the schedule or at the very end, not at --stop-at: a stopped-and-resumed run
            # logs exactly what the straight run logs
            if can_eval and (step % config.eval_every == 0 or step == total_steps):
                last.update(evaluate(model, data, config, ranks, dtype))
                log.eval(last)
            if step % config.save_every == 0 or step == stop:
                save()
                saved_at = step
    if saved_at != step:
        save()
    log.finish()
    return {**last, "step": step, "tokens": tokens_seen, "skipped": skipped, "total_steps": total_steps,
            "checkpoint": str(latest_checkpoint(out)) if ranks.is_main else None, "out": str(out)}


def step_batches(data: PackedData, sampler, config: TrainConfig, ranks: Distributed) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's inputs and targets for each micro-step of the next step (on a GPU, copies
    that overlap whatever the GPU is still computing: see data.get_batch)."""
    return [data.batch("train", sampler.next_starts(config.batch_size, ranks.rank, ranks.world_size),
                       config.seq_len, ranks.device) for _ in range(config.grad_accum)]


def counted_targets(batches: list[tuple[torch.Tensor, torch.Tensor]], ranks: Distributed) -> tuple[torch.Tensor, torch.Tensor]:
    """(the counted targets of each of this rank's micro-batches, those of the whole step on
    every rank), as tensors on the device: read by no one on the host."""
    counted = torch.stack([(y != IGNORE_INDEX).sum() for _, y in batches])
    total = counted.sum()
    if ranks.world_size > 1:
        dist.all_reduce(total)
    return counted, total


class TrainingSteps(torch.nn.Module):
    """What the training micro-steps call (and DDP wraps): the model, eager or, once `compile()`
    has run, through torch.compile; so compiling in the middle of a run needs no new DDP. The
    model's evaluation calls it directly, eagerly (another graph would be another compile)."""

    def __init__(self, model: Llama):
        super().__init__()
        self.model = model
        self.compiled: Callable | None = None

    def compile(self) -> None:
        # not a submodule: its parameters are the model's, and DDP would list them twice
        self.__dict__["compiled"] = torch.compile(self.model)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        return (self.model if self.compiled is None else self.compiled)(x, y)


def decide_compile(steps: TrainingSteps, remaining: int, step_seconds: float, dtype: torch.dtype,
                   ranks: Distributed, console: Console) -> None:
    """`--compile auto`, after the first steps: compile when the steps left would save more time
    than compiling costs (`compile_pays`); every rank follows rank 0's timing."""
    decision = torch.tensor([float(compile_pays(remaining, step_seconds, dtype))], device=ranks.device)
    if ranks.world_size > 1:
        dist.broadcast(decision, 0)
    if decision.item():
        if ranks.is_main:
            console.print(f"[bold]train[/]: compiling the model (--compile auto: {remaining:,} steps left at "
                          f"{step_seconds:.2f} s each): the next step waits for it", highlight=False)
        steps.compile()


class RunLog:
    """What rank 0 writes besides checkpoints: config.toml, metrics.jsonl, TensorBoard events,
    the progress bar, and loss.png at the end."""

    def __init__(self, out: Path, config: TrainConfig, resumed_at: int | None, enabled: bool):
        self.out, self.config, self.enabled = out, config, enabled
        self.metrics_path = out / METRICS_NAME
        self.tensorboard = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        if resumed_at is None:
            self.metrics_path.unlink(missing_ok=True)
        else:  # lines written after the checkpoint we resume from are about to be redone
            self.metrics_path.touch()
            kept = [line for line in self.metrics_path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= resumed_at]
            atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))
        self._file = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finish()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(out / "tensorboard"), purge_step=resumed_at)
        except ImportError:  # tensorboard is optional
            pass

    def start(self, data: PackedData, n_params: int, dtype: torch.dtype, ranks: Distributed,
              total_steps: int, console: Console, peak: Peak | None = None) -> None:
        atomic_write_text(self.out / "config.toml", to_toml(self.config))
        # the tokenizer the pack manifest names, copied beside the checkpoints: the run directory
        # alone is enough to generate from and export
        tokenizer, problem = data.tokenizer_model()
        if tokenizer is not None:
            shutil.copyfile(tokenizer, self.out / "tokenizer.model")
        elif problem:
            console.print(f"[yellow]warning:[/] {problem}: not copied into {self.out}; generate and export "
                          "will need --tokenizer", highlight=False)
        console.print(
            f"[bold]train[/] {n_params / 1e6:.2f}M parameters, vocab {data.vocab_size}, "
            f"{data.describe()}, {ranks.world_size} process(es) on {ranks.device.type}, "
            f"{str(dtype).removeprefix('torch.')}, {self.config.tokens_per_step(ranks.world_size):,} tokens/step, "
            f"{total_steps:,} steps -> {self.out}", highlight=False)
        compiling = {True: "on", False: "off", None: "auto (decided after the first steps)"}[self.config.compile]
        mfu = (f"MFU against {peak.flops / 1e12:,.3g} TFLOP/s per {ranks.device.type} ({peak.source})" if peak
               else "MFU not logged: no peak known for this GPU, give --peak-flops")
        console.print(f"[bold]train[/] compile {compiling}; {mfu}", highlight=False)

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def train(self, record: dict) -> None:
        if not self.enabled:
            return
        self._write({"split": "train", **record})
        if self.tensorboard is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
                if key in record:
                    self.tensorboard.add_scalar(f"train/{key}", record[key], record["step"])

    def eval(self, record: dict) -> None:
        if not self.enabled:
            return
        values = {k: v for k, v in record.items() if k.startswith("val_")}
        self._write({"split": "val", "step": record["step"], "tokens": record["tokens"], **values})
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(f"val/{key.removeprefix('val_')}", value, record["step"])

    @contextmanager
    def progress(self, total: int, done: int, console: Console) -> Iterator[Callable[[dict], None]]:
        """A rich bar (rank 0, unless NONLLAMA_NO_PROGRESS=1); yields the function that advances it."""
        progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console,
            disable=not self.enabled or os.environ.get("NONLLAMA_NO_PROGRESS") == "1")
        task = progress.add_task("train", total=total, completed=done, status="")

        def advance(record: dict) -> None:
            mfu = f"  MFU {record['mfu']:.1%}" if "mfu" in record else ""
            progress.update(task, completed=record["step"], status=(
                f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s{mfu}"))

        with progress:
            yield advance

    def finish(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        plot_losses(self.out)
