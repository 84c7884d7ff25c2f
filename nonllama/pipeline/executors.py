"""Where a stage's tasks run: this machine's processes, or a Ray cluster.

A stage never starts processes itself: it hands the driver a function and a list of small,
picklable tasks, and the driver's executor runs ``fn(task, report)`` for each, returning the
results in task order. ``report(docs, bytes)`` moves the progress bar, wherever the task runs.

- ``local`` (default): a pool of ``--workers`` processes on this machine, the ``nonllama``
  process among them (:func:`nonllama.pipeline.io.run_tasks`).
- ``ray``: every task is a Ray task (1 CPU), on the cluster at ``--ray-address`` (else
  ``RAY_ADDRESS``, else a Ray instance started here with ``--workers`` CPUs). Ray retries a
  task whose worker process died; a task that raises stops the stage with its error. Tasks
  read and write files by path, so every path must be on a filesystem every node sees, and
  absolute (the driver refuses a relative one).

Both give the same bytes: a task's output depends on its task alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from rich.console import Console

from nonllama.pipeline.io import Reporter, StageError, WorkerPool, make_progress, run_tasks

EXECUTORS = ("local", "ray")
RAY_RETRIES = 3  # times Ray reruns a task whose worker died (a task that raises is not rerun)
_PROGRESS_INTERVAL = 0.25  # seconds between two progress messages from a Ray task


class Executor(Protocol):
    kind: str  # "local" or "ray"
    workers: int  # tasks that run at once

    def map(self, fn: Callable[[Any, Reporter], Any], tasks: Sequence[Any], *, label: str,
            total_docs: int | None, on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """``fn(task, report)`` for every task; results in task order. `on_result(i, result)` is
        called here as each task's result arrives (in the order they finish)."""
        ...

    def start(self) -> None:
        """Get ready for tasks (called once a stage knows it has work): may return before it is."""
        ...

    def close(self) -> None: ...


class LocalExecutor:
    """Processes on this machine: ``workers - 1`` helper processes (started by `start`, or at the
    first pass with more than one task; kept for every later pass until `close`) and this process."""

    kind = "local"

    def __init__(self, workers: int = 1, console: Console | None = None):
        self.workers = max(1, workers)
        self.console = console
        self.pool = WorkerPool(self.workers - 1)

    def map(self, fn: Callable[[Any, Reporter], Any], tasks: Sequence[Any], *, label: str,
            total_docs: int | None, on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        return run_tasks(fn, tasks, workers=self.workers, description=label, total_docs=total_docs,
                         console=self.console, on_result=on_result, pool=self.pool)

    def start(self) -> None:
        self.pool.start()

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RayReporter:
    """A Ray task's `report`: sums progress and sends it to the driver's counter now and then."""

    def __init__(self, counter: Any):
        self.counter = counter
        self.docs = self.nbytes = 0
        self.sent = time.monotonic()

    def __call__(self, docs: int, nbytes: int) -> None:
        self.docs += docs
        self.nbytes += nbytes
        if time.monotonic() - self.sent >= _PROGRESS_INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self.docs or self.nbytes:
            self.counter.add.remote(self.docs, self.nbytes)
            self.docs = self.nbytes = 0
        self.sent = time.monotonic()


def _run_on_ray(fn: Callable[[Any, Reporter], Any], task: Any, counter: Any) -> Any:
    """The body of every Ray task (a module-level function: Ray imports it on the worker)."""
    report = _RayReporter(counter)
    result = fn(task, report)
    report.flush()
    return result


class _ProgressCounter:
    """A Ray actor the tasks send their progress to and the driver drains."""

    def __init__(self) -> None:
        self.docs = self.nbytes = 0

    def add(self, docs: int, nbytes: int) -> None:
        self.docs += docs
        self.nbytes += nbytes

    def take(self) -> tuple[int, int]:
        docs, nbytes, self.docs, self.nbytes = self.docs, self.nbytes, 0, 0
        return docs, nbytes


class RayExecutor:
    """Ray tasks on a cluster (`address`, else RAY_ADDRESS) or on a Ray instance started here."""

    kind = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, console: Console | None = None):
        try:
            import ray  # noqa: F401 - fail now, with a message, not at the first task
        except ImportError:
            raise StageError("--executor ray needs Ray: pip install 'nonllama[ray]'") from None
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.console = console
        self.workers = workers or 1
        self._started_here = False
        self._counter: Any = None  # the progress actor, one for every pass

    def start(self) -> None:
        return None  # Ray is joined at the first task: `connect`

    def connect(self) -> None:
        """Join the cluster, or start a Ray instance here: at the first task, so that a stage
        that is up to date or refused (a relative path) never waits for Ray."""
        import logging

        import ray

        if self._counter is not None:
            return
        if not ray.is_initialized():
            # every task uses one CPU: polars must not start a thread per core inside it
            runtime_env = {"env_vars": {"POLARS_MAX_THREADS": "1", "NONLLAMA_NO_PROGRESS": "1"}}
            options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR,
                                       "log_to_driver": True, "runtime_env": runtime_env}
            try:
                if self.address:
                    ray.init(address=self.address, **options)
                else:  # "local": a new instance, even where a cluster already runs on this machine
                    ray.init(address="local", num_cpus=self.workers, **options)
            except Exception as e:  # noqa: BLE001 - Ray raises several kinds (connection, authentication, ...)
                where = f"--ray-address {self.address}" if self.address else "a local Ray instance"
                raise StageError(f"{where}: cannot connect ({' '.join(str(e).split())[:200]})") from None
            self._started_here = True
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._counter = ray.remote(num_cpus=0)(_ProgressCounter).remote()  # one for every pass

    def map(self, fn: Callable[[Any, Reporter], Any], tasks: Sequence[Any], *, label: str,
            total_docs: int | None, on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        import ray
        from ray.exceptions import RayTaskError, WorkerCrashedError

        results: list[Any] = [None] * len(tasks)
        if not tasks:
            return results
        self.connect()
        counter = self._counter
        ray.get(counter.take.remote())  # what an earlier, failed pass left
        remote = ray.remote(_run_on_ray).options(num_cpus=1, max_retries=RAY_RETRIES, retry_exceptions=False)
        refs = [remote.remote(fn, task, counter) for task in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        try:
            with make_progress(self.console) as progress:
                bar = progress.add_task(label, total=total_docs, bytes=0)

                def advance() -> None:
                    docs, nbytes = ray.get(counter.take.remote())
                    if docs or nbytes:
                        done = progress.tasks[bar].fields.get("bytes", 0)
                        progress.update(bar, advance=docs, bytes=done + nbytes)

                while pending:
                    ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2, fetch_local=False)
                    for ref in ready:
                        i = index[ref]
                        try:
                            results[i] = ray.get(ref)
                        except RayTaskError as e:
                            cause = getattr(e, "cause", None)
                            raise (cause if isinstance(cause, Exception) else StageError(str(e))) from None
                        except WorkerCrashedError:
                            raise StageError(f"{label}: a Ray worker died running task {i + 1} of {len(tasks)}, "
                                             f"{RAY_RETRIES + 1} times; see the Ray logs") from None
                        if on_result is not None:
                            on_result(i, results[i])
                    advance()
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return results

    def close(self) -> None:
        import ray

        if self._counter is not None and ray.is_initialized():
            ray.kill(self._counter)
        self._counter = None
        if self._started_here and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def task_threads(executor: Executor | None, workers: int = 1) -> int:
    """CPU threads one task may use (torch's, in the tasks that run a model): a Ray task has one
    CPU; local workers share this machine's cores. `workers`: the local pool the driver makes
    when no executor is given."""
    if executor is not None and executor.kind == "ray":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, executor.workers if executor is not None else workers))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch on `n` threads inside the block, and the count this process had before afterwards:
    the process that runs the driver runs tasks too."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_executor(kind: str = "local", *, workers: int = 1, ray_address: str | None = None,
                  console: Console | None = None) -> LocalExecutor | RayExecutor:
    """The executor `--executor KIND` names (close it, or use it as a context manager)."""
    if kind == "local":
        if ray_address:
            raise StageError("--ray-address is for --executor ray")
        return LocalExecutor(workers, console)
    if kind == "ray":
        return RayExecutor(ray_address, workers, console)
    raise StageError(f"--executor {kind!r}: choose one of {', '.join(EXECUTORS)}")
