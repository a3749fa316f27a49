"""The C++ depthwise 3x3 kernel for CPU (mnv2_trainer.cpu_depthwise): outputs and both gradients per
layer against MindSpore's nn.Conv2d, a float64 reference and finite differences, and through the whole
model against nn.Conv2d; the cache and the fallbacks. Weights and inputs are seeded."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ms = pytest.importorskip("mindspore", reason="the trainer extra (MindSpore) is not installed")
np = pytest.importorskip("numpy")

from mindspore import nn, ops  # noqa: E402
from mnv2_trainer import cpu_depthwise  # noqa: E402
from mnv2_trainer.model import create_model  # noqa: E402

pytestmark = pytest.mark.mindspore

SMALL = "mobilenet_v2_035_96"


@pytest.fixture(autouse=True)
def graph_mode() -> Iterator[None]:
    """Graph mode on CPU, as the trainer runs; the previous mode is restored."""
    if ms.get_context("device_target") != "CPU":
        pytest.skip("the kernel is for the CPU target")
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=mode)


@pytest.fixture
def fresh_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty kernel cache and no remembered build; later tests build (or find) the real one again."""
    monkeypatch.setenv(cpu_depthwise.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(cpu_depthwise.ENV_MODE, raising=False)
    cpu_depthwise.build_library.cache_clear()
    cpu_depthwise._logged.clear()
    yield tmp_path
    cpu_depthwise.build_library.cache_clear()


def _skip_without_compiler() -> None:
    """Only a machine without a C++ compiler may skip; with one, a failed build is a failure."""
    if cpu_depthwise._compiler() is None:
        pytest.skip("no C++ compiler here ($CXX, g++, c++ or clang++): the trainer uses nn.Conv2d")


def _library() -> str:
    _skip_without_compiler()
    path, how = cpu_depthwise.build_library()
    assert path is not None, f"a C++ compiler is here, but the kernel was not built: {how}"
    return path


class _Grads(nn.Cell):
    """Output, input gradient and weight gradient of one convolution for a given output gradient."""

    def __init__(self, conv: nn.Cell) -> None:
        super().__init__()
        self.conv = conv
        self.grad = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)
        self.params = ms.ParameterTuple(conv.trainable_params())

    def construct(self, x: ms.Tensor, dy: ms.Tensor) -> tuple[ms.Tensor, ms.Tensor, ms.Tensor]:
        y = self.conv(x)
        inputs, weights = self.grad(self.conv, self.params)(x, dy)
        return y, inputs[0], weights[0]


# --- float64 reference (numpy) of the depthwise 3x3 convolution, padding 1 ---------------------------


def _taps(k: int, stride: int, n: int) -> slice:
    return slice(k, k + stride * (n - 1) + 1, stride)


def _out(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def _ref_forward(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    n, c, h, wd = x.shape
    ho, wo = _out(h, stride), _out(wd, stride)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((n, c, ho, wo))
    for kh in range(3):
        for kw in range(3):
            y += w[None, :, 0, kh, kw, None, None] * xp[:, :, _taps(kh, stride, ho), _taps(kw, stride, wo)]
    return y


def _ref_grad_input(dy: np.ndarray, w: np.ndarray, stride: int, shape: tuple[int, ...]) -> np.ndarray:
    n, c, h, wd = shape
    ho, wo = dy.shape[2:]
    dxp = np.zeros((n, c, h + 2, wd + 2))
    for kh in range(3):
        for kw in range(3):
            dxp[:, :, _taps(kh, stride, ho), _taps(kw, stride, wo)] += w[None, :, 0, kh, kw, None, None] * dy
    return dxp[:, :, 1:-1, 1:-1]


def _ref_grad_filter(dy: np.ndarray, x: np.ndarray, stride: int) -> np.ndarray:
    ho, wo = dy.shape[2:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    dw = np.zeros((x.shape[1], 1, 3, 3))
    for kh in range(3):
        for kw in range(3):
            taps = xp[:, :, _taps(kh, stride, ho), _taps(kw, stride, wo)]
            dw[:, 0, kh, kw] = (dy * taps).sum(axis=(0, 2, 3))
    return dw


# Float32 rounding of a sum of k products is bounded by ~k*eps times the sum of the products' absolute
# values, whatever the cancellation; so each result element is compared with its float64 value relative
# to that sum (the same operation on |x|, |w|, |dy|). Measured over 20 seeds of every shape below, the
# largest error relative to it was, for MindSpore's kernel and ours: output 2.6e-7 and 2.6e-7, input
# gradient 3.1e-7 and 2.2e-7, filter gradient 1.1e-7 and 0.9e-7 (ours sums it in double); between the
# two kernels 3.2e-7. Both are as close to float64 as float32 allows (eps = 1.2e-7): no kernel defect.
# The bound has 3x margin.
ROUNDING = 1e-6

SHAPES = [
    ((2, 8, 7, 9), 1),
    ((2, 8, 7, 9), 2),
    ((1, 5, 8, 6), 2),  # even sizes at stride 2
    ((2, 3, 5, 4), 2),
    ((1, 2, 2, 3), 1),
    ((3, 4, 1, 1), 2),  # a 1x1 image: only the centre tap
    ((4, 24, 28, 28), 1),
    ((4, 24, 29, 30), 2),
]


@dataclass(frozen=True)
class _Layer:
    """Seeded inputs of one layer, the float64 reference and both kernels' float32 results."""

    x: np.ndarray
    w: np.ndarray
    dy: np.ndarray
    stride: int
    reference: tuple[np.ndarray, np.ndarray, np.ndarray]  # y, dx, dw in float64
    magnitude: tuple[np.ndarray, np.ndarray, np.ndarray]  # the same on absolute values
    kernels: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


@functools.cache
def _layer(shape: tuple[int, int, int, int], stride: int, lib: str, seed: int = 0) -> _Layer:
    """Computed once per shape (each kernel compiles a graph) and shared by the tests below."""
    n, c, h, w = shape
    rng = np.random.default_rng([seed, n, c, h, w, stride])
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal((n, c, _out(h, stride), _out(w, stride)), dtype=np.float32)
    weight = rng.standard_normal((c, 1, 3, 3), dtype=np.float32)
    x64, dy64, w64 = (a.astype(np.float64) for a in (x, dy, weight))
    ax, ady, aw = np.abs(x64), np.abs(dy64), np.abs(w64)
    kernels = {}
    for name, conv in (
        ("MindSpore", nn.Conv2d(c, c, 3, stride, pad_mode="pad", padding=1, group=c, has_bias=False)),
        ("C++", cpu_depthwise.DepthwiseConv3x3(c, stride, lib)),
    ):
        conv.weight.set_data(ms.Tensor(weight))
        outputs = _Grads(conv)(ms.Tensor(x), ms.Tensor(dy))
        kernels[name] = tuple(a.asnumpy() for a in outputs)
    return _Layer(
        x=x64,
        w=w64,
        dy=dy64,
        stride=stride,
        reference=(
            _ref_forward(x64, w64, stride),
            _ref_grad_input(dy64, w64, stride, shape),
            _ref_grad_filter(dy64, x64, stride),
        ),
        magnitude=(
            _ref_forward(ax, aw, stride),
            _ref_grad_input(ady, aw, stride, shape),
            _ref_grad_filter(ady, ax, stride),
        ),
        kernels=kernels,
    )


def _assert_within(got: np.ndarray, want: np.ndarray, bound: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    excess = np.abs(got - want) - bound
    i = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess[i] <= 0, (
        f"{what}: at {tuple(int(k) for k in i)} got {got[i]!r}, want {want[i]!r} within {bound[i]:.3g}"
    )


@pytest.mark.parametrize("shape, stride", SHAPES)
def test_output_and_gradients_match_float64(shape: tuple[int, int, int, int], stride: int) -> None:
    """Both kernels, element by element, against float64 and against each other."""
    layer = _layer(shape, stride, _library())
    native, ours = layer.kernels["MindSpore"], layer.kernels["C++"]
    for i, what in enumerate(("output", "input gradient", "filter gradient")):
        bound = ROUNDING * layer.magnitude[i]
        _assert_within(native[i], layer.reference[i], bound, f"MindSpore's {what} against float64")
        _assert_within(ours[i], layer.reference[i], bound, f"our {what} against float64")
        _assert_within(ours[i], native[i], bound, f"our {what} against MindSpore's")


@pytest.mark.parametrize("shape, stride", SHAPES)
def test_gradients_match_finite_differences(shape: tuple[int, int, int, int], stride: int) -> None:
    """Both kernels' gradients against central differences, in float64, of the loss sum(y * dy) along
    random directions: a check of the backward against the forward's definition alone."""
    layer = _layer(shape, stride, _library())
    rng = np.random.default_rng(0)

    def loss(x: np.ndarray, w: np.ndarray) -> float:
        return float((_ref_forward(x, w, layer.stride) * layer.dy).sum())

    h = 1e-3
    for _ in range(3):
        vx, vw = rng.standard_normal(layer.x.shape), rng.standard_normal(layer.w.shape)
        fd_x = (loss(layer.x + h * vx, layer.w) - loss(layer.x - h * vx, layer.w)) / (2 * h)
        fd_w = (loss(layer.x, layer.w + h * vw) - loss(layer.x, layer.w - h * vw)) / (2 * h)
        # the loss is linear in x and in w: the differences are exact up to float64 rounding
        for name, (_, dx, dw) in layer.kernels.items():
            bound_x = ROUNDING * float((layer.magnitude[1] * np.abs(vx)).sum())
            bound_w = ROUNDING * float((layer.magnitude[2] * np.abs(vw)).sum())
            assert abs(float((dx * vx).sum()) - fd_x) <= bound_x, f"{name} input gradient"
            assert abs(float((dw * vw).sum()) - fd_w) <= bound_w, f"{name} filter gradient"


def _depthwise_cells(net: nn.Cell) -> int:
    return sum(isinstance(cell, cpu_depthwise.DepthwiseConv3x3) for _, cell in net.cells_and_names())


class _ModelGrads(nn.Cell):
    """Outputs of a network and the gradients of its loss, in one graph (one compile)."""

    def __init__(self, net: nn.Cell) -> None:
        super().__init__()
        self.net = net
        self.loss = nn.WithLossCell(net, nn.CrossEntropyLoss())
        self.grad = ops.GradOperation(get_by_list=True)
        self.params = ms.ParameterTuple(net.trainable_params())

    def construct(self, x: ms.Tensor, y: ms.Tensor) -> tuple[ms.Tensor, tuple[ms.Tensor, ...]]:
        return self.net(x), self.grad(self.loss, self.params)(x, y)


# Through the whole model, the comparison is made with BatchNorm in inference mode, on moving
# statistics from training-mode passes. In training mode it is ill-conditioned, and that is not the
# kernel: with MindSpore's kernel alone, reversing the order of the batch (the same mathematics, other
# rounding) moved gradients by up to 4% of the largest gradient at batch 4 and 0.6% at batch 32 (20
# and 10 seeds), up to 44% and 8% of a parameter's own largest: BatchNorm over the 1x1 and 2x1 maps of
# the last blocks divides by the spread of a handful of values. Per layer (above) both kernels are
# equally close to float64, so a difference through a training-mode model is float32 rounding
# amplified, not a kernel defect.
# In inference mode the same batch reversal moves gradients by at most 2e-7 of the largest. Over 20
# seeds of the test below, the C++ kernel's gradients differed from MindSpore's by at most 1.6e-6 of
# each parameter's largest (or of 1e-4 of the model's largest, whichever is larger) and by 5e-8 of
# the model's largest; the outputs were identical. The bound has 6x margin.
MODEL_ROUNDING = 1e-5


@dataclass(frozen=True)
class _Model:
    """One seeded model with both kernels in inference mode: outputs and gradients of each."""

    names: list[str]
    depthwise: set[str]  # names of the depthwise 3x3 weights
    outputs: dict[str, np.ndarray]
    gradients: dict[str, list[np.ndarray]]


def _whole_model(seed: int, monkeypatch: pytest.MonkeyPatch) -> _Model:
    ms.set_seed(seed)
    monkeypatch.setenv(cpu_depthwise.ENV_MODE, "native")
    native = create_model(SMALL, num_classes=10, drop_rate=0.0)
    monkeypatch.setenv(cpu_depthwise.ENV_MODE, "auto")
    fast = create_model(SMALL, num_classes=10, drop_rate=0.0)
    assert (_depthwise_cells(native), _depthwise_cells(fast)) == (0, 17)
    # the same parameters: names, shapes, order (checkpoints are interchangeable)
    assert [(p.name, p.shape) for p in fast.get_parameters()] == [
        (p.name, p.shape) for p in native.get_parameters()
    ]

    rng = np.random.default_rng(seed)
    # BatchNorm statistics of a realistic network, from training-mode passes over one batch: with the
    # initial moving mean 0 and variance 1 the model's outputs are ~1e-9 and would say nothing
    fast.set_train(True)
    calibration = ms.Tensor(rng.standard_normal((16, 3, 32, 32), dtype=np.float32))
    for _ in range(25):  # momentum 0.9: 0.9**25 = 7% of the initial statistics left
        fast(calibration)
    ms.load_param_into_net(native, {p.name: p for p in fast.get_parameters()}, strict_load=True)

    x = ms.Tensor(rng.standard_normal((4, 3, 33, 32), dtype=np.float32))  # odd size: stride 2 rounds up
    y = ms.Tensor(np.arange(4, dtype=np.int32))
    results = {}
    for kernel, net in (("MindSpore", native), ("C++", fast)):
        cell = _ModelGrads(net)
        cell.set_train(False)  # BatchNorm on its moving statistics, see below
        out, grads = cell(x, y)
        results[kernel] = (out.asnumpy(), [g.asnumpy() for g in grads])
    return _Model(
        names=[p.name for p in native.trainable_params()],
        depthwise={
            cell.weight.name
            for _, cell in fast.cells_and_names()
            if isinstance(cell, cpu_depthwise.DepthwiseConv3x3)
        },
        outputs={k: r[0] for k, r in results.items()},
        gradients={k: r[1] for k, r in results.items()},
    )


def _gradient_bounds(want: list[np.ndarray]) -> list[float]:
    """Per parameter: MODEL_ROUNDING of its largest gradient, or of 1e-4 of the model's largest if that
    is more (BatchNorm betas after the linear projections have a zero gradient up to rounding)."""
    scale = max(np.abs(g).max() for g in want)
    return [MODEL_ROUNDING * max(np.abs(g).max(), 1e-4 * scale) for g in want]


def test_whole_model_matches_native(monkeypatch: pytest.MonkeyPatch) -> None:
    _library()
    model = _whole_model(0, monkeypatch)
    want, got = model.outputs["MindSpore"], model.outputs["C++"]
    assert want.std() > 0.01, "degenerate outputs: the comparison would say nothing"
    np.testing.assert_allclose(got, want, rtol=0, atol=MODEL_ROUNDING * np.abs(want).max())

    want, got = model.gradients["MindSpore"], model.gradients["C++"]
    scale = max(np.abs(g).max() for g in want)
    bounds = _gradient_bounds(want)
    for name, a, b, atol in zip(model.names, want, got, bounds, strict=True):
        if name in model.depthwise:
            # 1.3e-5 at the least over 20 seeds; ~1e-8 with the initial BatchNorm statistics
            assert np.abs(a).max() > 1e-6 * scale, f"{name}: no gradient reaches the layer"
        np.testing.assert_allclose(b, a, rtol=0, atol=atol, err_msg=name)


def test_env_native_forces_nn_conv2d(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(cpu_depthwise.ENV_MODE, "native")
    cpu_depthwise._logged.clear()
    with caplog.at_level(logging.INFO, logger="mnv2_trainer"):
        assert cpu_depthwise.library() is None
        net = create_model(SMALL, num_classes=10)
    assert _depthwise_cells(net) == 0
    assert "MindSpore's nn.Conv2d (MNV2_CPU_DEPTHWISE=native)" in caplog.text


def test_builds_into_the_cache_once(fresh_build: Path, caplog: pytest.LogCaptureFixture) -> None:
    _skip_without_compiler()
    with caplog.at_level(logging.INFO, logger="mnv2_trainer"):
        lib = cpu_depthwise.library()
    assert lib is not None, caplog.text
    assert Path(lib).parent == fresh_build
    assert [p.name for p in fresh_build.iterdir()] == [Path(lib).name]  # no temporary file left
    assert "C++ kernel (built " in caplog.text
    cpu_depthwise.build_library.cache_clear()
    path, how = cpu_depthwise.build_library()
    assert (path, how) == (lib, f"cached {lib}")


def test_concurrent_builds_share_one_file(fresh_build: Path) -> None:
    """Two processes (like msrun ranks) building into the same empty cache at once."""
    _library()  # skips without a compiler
    code = "from mnv2_trainer import cpu_depthwise as c; p, how = c.build_library(); assert p, how; print(p)"
    env = dict(os.environ, **{cpu_depthwise.ENV_CACHE: str(fresh_build / "shared")})
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1]
    assert [p.name for p in (fresh_build / "shared").iterdir()] == [Path(outputs[0]).name]


def test_no_compiler_falls_back_to_native(
    fresh_build: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(fresh_build))  # no g++/c++/clang++ on it
    monkeypatch.delenv("CXX", raising=False)
    with caplog.at_level(logging.INFO, logger="mnv2_trainer"):
        net = create_model(SMALL, num_classes=10)
    assert _depthwise_cells(net) == 0
    assert "MindSpore's nn.Conv2d, because no C++ compiler found" in caplog.text
    assert caplog.text.count("no C++ compiler found") == 1  # once, not once per layer

    monkeypatch.setenv(cpu_depthwise.ENV_MODE, "fast")
    with pytest.raises(cpu_depthwise.KernelUnavailableError, match=r"no C\+\+ compiler"):
        create_model(SMALL, num_classes=10)


def test_failed_build_falls_back_to_native(
    fresh_build: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = fresh_build / "broken-cxx"
    broken.write_text("#!/bin/sh\necho 'error: no such thing' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    with caplog.at_level(logging.INFO, logger="mnv2_trainer"):
        assert cpu_depthwise.library() is None
    assert "failed (1): error: no such thing" in caplog.text
    assert [p.name for p in fresh_build.iterdir()] == ["broken-cxx"]  # the temporary file is gone


def test_unwritable_user_cache_falls_back_to_a_private_temp_dir(
    fresh_build: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod's user without a writable home still gets the kernel, built under the temporary dir."""
    _library()  # skips without a compiler
    not_a_dir = fresh_build / "home-cache"
    not_a_dir.write_text("")
    monkeypatch.delenv(cpu_depthwise.ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_dir))
    monkeypatch.setattr(tempfile, "tempdir", str(fresh_build / "tmp"))
    cpu_depthwise.build_library.cache_clear()
    path, how = cpu_depthwise.build_library()
    assert path is not None, how
    private = fresh_build / "tmp" / f"mnv2_trainer-{os.getuid()}"
    assert Path(path).parent == private
    assert private.stat().st_mode & 0o777 == 0o700


def test_refuses_a_cache_others_can_write(fresh_build: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Loading a library from a directory others can write to would run their code."""
    fresh_build.chmod(0o777)
    with caplog.at_level(logging.INFO, logger="mnv2_trainer"):
        assert cpu_depthwise.library() is None
    assert "writable by others" in caplog.text
