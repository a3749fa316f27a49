"""Depthwise 3x3 convolutions on CPU through a small C++ kernel (MindSpore ``ops.Custom``, AOT).

Why: MindSpore 2.10's CPU kernels for depthwise convolutions (``nn.Conv2d`` with ``group`` equal to
the channels) are slow: they are 87 % of the kernel time of a CPU train step, and one
16x144x56x56 layer took ~1.9 CPU-s forward + backward, against ~0.015 CPU-s for the direct loops in
``cpu_depthwise.cc``. That matters for the CPU paths only (tests, demo, benchmarks): on Ascend or
GPU the native convolution is always used.

How: :func:`depthwise_conv3x3` returns a :class:`DepthwiseConv3x3`, an ``nn.Conv2d`` subclass with
the same ``weight`` parameter (shape ``(C, 1, 3, 3)``, same initialisation, same checkpoints) whose
``construct`` calls the C++ kernels (forward; the backward pass through a bprop of two more kernels).
The kernel library is compiled at first use with the system C++ compiler (``$CXX``, ``g++``,
``c++`` or ``clang++``) into a cache directory, under a name keyed by the hash of the source and
the compile command, so an edited source or another compiler builds anew. Several processes (msrun
ranks) may build at once: each compiles to its own temporary file and renames it into place
atomically. A cache directory of another user or writable by others is refused (a library planted
there would run inside the trainer). Without a compiler, or if the build fails, the native
``nn.Conv2d`` is used and the reason is logged.

Environment:
    MNV2_CPU_DEPTHWISE: ``auto`` (default): the C++ kernel on CPU when it can be built, else native;
        ``native``: always MindSpore's ``nn.Conv2d``; ``fast``: the C++ kernel on CPU or an error.
    MNV2_KERNEL_CACHE: the cache directory (default ``$XDG_CACHE_HOME/mnv2_trainer``, or
        ``~/.cache/mnv2_trainer``; if that is not writable, ``$TMPDIR/mnv2_trainer-<uid>``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import mindspore as ms
from mindspore import Tensor, nn, ops

__all__ = [
    "ENV_CACHE",
    "ENV_MODE",
    "DepthwiseConv3x3",
    "KernelUnavailableError",
    "depthwise_conv3x3",
    "library",
]

ENV_MODE = "MNV2_CPU_DEPTHWISE"
ENV_CACHE = "MNV2_KERNEL_CACHE"
SOURCE = Path(__file__).with_name("cpu_depthwise.cc")
# No -march: the loops are memory-bound, the baseline build is as fast, and the cache may be shared
# by machines with different CPUs. -fopenmp-simd: the `omp simd` reductions only, no OpenMP threads
# (see the .cc for why).
CXXFLAGS = ("-O3", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC")
_KERNELS = tuple(f"dw3x3_{k}_s{s}" for s in (1, 2) for k in ("forward", "grad_input", "grad_filter"))

_logger = logging.getLogger(__name__)
_logged: set[str] = set()


class KernelUnavailableError(RuntimeError):
    """``MNV2_CPU_DEPTHWISE=fast`` but the C++ kernel cannot be used."""


def cache_dirs() -> list[Path]:
    """Where compiled kernels are kept, in order of preference: ``$MNV2_KERNEL_CACHE`` alone if set,
    else the user's cache directory, then a private one under the temporary directory (for pods whose
    user has no writable home)."""
    if os.environ.get(ENV_CACHE):
        return [Path(os.environ[ENV_CACHE]).expanduser()]
    dirs = []
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        dirs.append(base / "mnv2_trainer")
    except RuntimeError:  # no home directory
        pass
    dirs.append(Path(tempfile.gettempdir()) / f"mnv2_trainer-{os.getuid()}")
    return dirs


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def _check_library(path: Path) -> None:
    """Load the library and look up every kernel, so that a broken build fails here, not in a graph."""
    lib = ctypes.CDLL(str(path))
    for name in _KERNELS:
        getattr(lib, name)


def _private_dir(directory: Path) -> None:
    """Create ``directory`` (mode 0700); refuse one that others could have put a library into."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise PermissionError(f"{directory} belongs to another user or is writable by others")


def _build_in(directory: Path, name: str, command: list[str]) -> tuple[str | None, str]:
    """The library ``name`` in ``directory``, compiled with ``command`` unless already there."""
    _private_dir(directory)
    path = directory / name
    if path.is_file():
        _check_library(path)
        return str(path), f"cached {path}"
    start = time.perf_counter()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".so", dir=directory)
    os.close(fd)
    try:
        proc = subprocess.run(
            [*command, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=600, check=False
        )
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return None, f"{command[0]} failed ({proc.returncode}): {' | '.join(detail)}"
        _check_library(Path(tmp))
        os.replace(tmp, path)  # atomic: a concurrent process (msrun rank) sees no file or a complete one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(path), f"built {path} with {command[0]} in {time.perf_counter() - start:.1f} s"


@functools.cache
def build_library() -> tuple[str | None, str]:
    """The compiled kernel library, built if not cached: ``(path, how)`` or ``(None, why not)``."""
    if not SOURCE.is_file():
        return None, f"kernel source {SOURCE} is missing"
    compiler = _compiler()
    if compiler is None:
        return None, "no C++ compiler found ($CXX, g++, c++ or clang++)"
    command = [compiler, *CXXFLAGS]
    key = hashlib.sha256(SOURCE.read_bytes())
    key.update("\0".join([*command, platform.machine()]).encode())
    name = f"cpu_depthwise-{key.hexdigest()[:16]}.so"
    problems = []
    for directory in cache_dirs():
        try:
            return _build_in(directory, name, command)
        except (OSError, subprocess.SubprocessError, AttributeError) as exc:
            problems.append(f"{directory}: {type(exc).__name__}: {exc}")
    return None, f"cannot build or load the kernel ({'; '.join(problems)})"


def _log_once(level: int, message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        _logger.log(level, message)


def _unavailable(reason: str) -> None:
    if os.environ.get(ENV_MODE, "").strip().lower() == "fast":
        raise KernelUnavailableError(f"{ENV_MODE}=fast, but {reason}")
    _log_once(logging.WARNING, f"depthwise 3x3 convolutions on CPU: MindSpore's nn.Conv2d, because {reason}")


def library() -> str | None:
    """Path of the kernel library to use for depthwise convolutions, or ``None`` for the native ones.

    ``None`` when the device target is not CPU, when ``MNV2_CPU_DEPTHWISE=native``, or when the
    library cannot be built (logged once, or :class:`KernelUnavailableError` if the mode is ``fast``).
    """
    mode = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if mode not in ("auto", "native", "fast"):
        _log_once(logging.WARNING, f"{ENV_MODE}={mode!r} is not auto, native or fast: using auto")
    if mode == "native":
        _log_once(
            logging.INFO, f"depthwise 3x3 convolutions on CPU: MindSpore's nn.Conv2d ({ENV_MODE}=native)"
        )
        return None
    target = ms.get_context("device_target")
    if target != "CPU":
        if mode == "fast":
            raise KernelUnavailableError(f"{ENV_MODE}=fast, but the device target is {target}, not CPU")
        return None
    path, how = build_library()
    if path is None:
        _unavailable(how)
        return None
    _log_once(logging.INFO, f"depthwise 3x3 convolutions on CPU: C++ kernel ({how})")
    return path


def _out_size(size: int, stride: int) -> int:
    return size if size < 0 else (size - 1) // stride + 1  # kernel 3, padding 1; -1 = dynamic


def _float32(x_dtype: ms.Type, *_: ms.Type) -> ms.Type:
    element = x_dtype.element_type() if isinstance(x_dtype, ms.TensorType) else x_dtype
    if element != ms.float32:
        raise TypeError(
            f"the CPU depthwise kernel computes in float32 only, got {x_dtype}; set {ENV_MODE}=native"
        )
    return x_dtype


@functools.cache
def _forward_op(lib: str, stride: int) -> ops.Custom:
    """The forward Custom op of one stride, with its bprop; shared by all layers of that stride."""
    grad_input = ops.Custom(
        f"{lib}:dw3x3_grad_input_s{stride}",
        out_shape=lambda dy, w, x: x,  # x is passed for its shape (odd sizes are ambiguous at stride 2)
        out_dtype=_float32,
        func_type="aot",
    )
    grad_filter = ops.Custom(
        f"{lib}:dw3x3_grad_filter_s{stride}",
        out_shape=lambda dy, x: (x[1], 1, 3, 3),
        out_dtype=_float32,
        func_type="aot",
    )

    def bprop(x: Tensor, w: Tensor, out: Tensor, dout: Tensor) -> tuple[Tensor, Tensor]:
        return grad_input(dout, w, x), grad_filter(dout, x)

    return ops.Custom(
        f"{lib}:dw3x3_forward_s{stride}",
        out_shape=lambda x, w: (x[0], x[1], _out_size(x[2], stride), _out_size(x[3], stride)),
        out_dtype=_float32,
        func_type="aot",
        bprop=bprop,
    )


class DepthwiseConv3x3(nn.Conv2d):
    """``nn.Conv2d(C, C, 3, stride, pad_mode="pad", padding=1, group=C, has_bias=False)`` computed by
    the C++ kernel: the same ``weight`` parameter, so the same names, initialisation and checkpoints."""

    def __init__(self, channels: int, stride: int, lib: str) -> None:
        super().__init__(
            channels, channels, 3, stride, pad_mode="pad", padding=1, group=channels, has_bias=False
        )
        self.depthwise = _forward_op(lib, stride)

    def construct(self, x: Tensor) -> Tensor:
        return self.depthwise(x, self.weight)


def depthwise_conv3x3(channels: int, stride: int) -> DepthwiseConv3x3 | None:
    """A depthwise 3x3 convolution (padding 1) on the C++ kernel, or ``None`` to use ``nn.Conv2d``."""
    if stride not in (1, 2):
        return None
    lib = library()
    if lib is None:
        return None
    try:
        return DepthwiseConv3x3(channels, stride, lib)
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. MS_CUSTOM_AOT_WHITE_LIST excludes the cache
        _unavailable(f"MindSpore refused the custom op ({exc})")
        return None
