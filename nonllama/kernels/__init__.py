"""nonllama's C++ decoding step (decode.cpp), built on first use with torch's extension builder.

`load()` returns the compiled module, or None when decoding should stay in torch:
NONLLAMA_KERNELS=0 in the environment, or a build that failed (no compiler, a compiler
error). It is built once per machine, for this CPU (-march=native, OpenMP), into torch's
extension directory (TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions), under a name
that changes with the source, the flags, torch's version and the CPU, so a changed file or
another machine sharing the directory gets its own build. The first build takes ~30 s and
says so on stderr; a failed one says why, once, and decoding carries on in torch. Builds are
serialized across processes by a lock the system releases when its holder dies, so a build
interrupted half-way (Ctrl-C) does not leave the next one waiting on torch's lock file forever.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).with_name("decode.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp"]
ENV = "NONLLAMA_KERNELS"

_module: ModuleType | None = None
_tried = False
problem: str | None = None  # why load() returned None, when it did


def enabled() -> bool:
    """False when the environment turns the kernels off (NONLLAMA_KERNELS=0)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu() -> str:
    """What -march=native compiles for: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def build_name() -> str:
    import torch

    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), torch.__version__.encode(), _cpu().encode(),
                 sys.version.encode()):
        digest.update(part)
        digest.update(b"\0")
    return f"nonllama_decode_{digest.hexdigest()[:16]}"


def _build_directory(name: str) -> Path | None:
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(name, verbose=False))
    except Exception:  # a private helper of torch's: if it moved, do without
        return None


@contextmanager
def _build_lock(directory: Path | None) -> Iterator[None]:
    """One build at a time, across processes, under a lock the system drops when its holder
    dies. Holding it, a lock file of torch's own is one a build that died left behind (torch
    would wait on it forever): it is removed."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock only
        fcntl = None
    if directory is None or fcntl is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "nonllama.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (directory / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _find_ninja() -> None:
    """torch's builder runs `ninja` from PATH; the one `pip install ninja` put beside this Python
    is not on it when the environment was not activated (`.venv/bin/nonllama ...`)."""
    beside = Path(sys.executable).parent
    if shutil.which("ninja") is None and shutil.which("ninja", path=str(beside)) is not None:
        os.environ["PATH"] = str(beside) + os.pathsep + os.environ.get("PATH", "")


def _cause(error: BaseException) -> str:
    """The line of a build error that says what went wrong (the compiler's first error)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() and not line.lower().startswith(("error building extension", "ninja: build stopped")):
            return line[:300]
    return (lines[0] if lines else type(error).__name__)[:300]


def load() -> ModuleType | None:
    """The compiled kernel module, or None (see `problem`); built on the first call."""
    global _module, _tried, problem
    if not enabled():
        return None
    if _tried:
        return _module
    _tried = True
    try:
        from torch.utils.cpp_extension import load as build

        _find_ninja()
        name = build_name()
        directory = _build_directory(name)
        if directory is not None and not any(directory.glob(f"{name}*.so")) and not any(directory.glob(f"{name}*.pyd")):
            print("nonllama: compiling nonllama's decode kernel (once, ~30 s)", file=sys.stderr, flush=True)
        with _build_lock(directory):
            _module = build(name=name, sources=[str(SOURCE)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"],
                            verbose=False)
    except Exception as e:  # noqa: BLE001 - any failure means: decode with torch
        problem = _cause(e)
        print(f"nonllama: warning: the C++ decode kernel did not build ({problem}); decoding with torch, "
              f"slower (set {ENV}=0 to skip the build)", file=sys.stderr, flush=True)
        _module = None
    return _module
