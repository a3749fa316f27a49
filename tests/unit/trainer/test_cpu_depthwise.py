"""The C++ depthwise 3x3 kernel for CPU (mnv2_trainer.cpu_depthwise) against MindSpore's nn.Conv2d:
outputs and both gradients, per layer and through the whole model; the cache and the fallbacks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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


@pytest.mark.parametrize(
    "shape, stride",
    [
        ((2, 8, 7, 9), 1),
        ((2, 8, 7, 9), 2),
        ((1, 5, 8, 6), 2),  # even sizes at stride 2
        ((2, 3, 5, 4), 2),
        ((1, 2, 2, 3), 1),
        ((3, 4, 1, 1), 2),  # a 1x1 image: only the centre tap
        ((4, 24, 28, 28), 1),
        ((4, 24, 29, 30), 2),
    ],
)
def test_output_and_gradients_match_native(shape: tuple[int, int, int, int], stride: int) -> None:
    lib = _library()
    n, c, h, w = shape
    rng = np.random.default_rng(sum(shape) + stride)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal((n, c, (h - 1) // stride + 1, (w - 1) // stride + 1), dtype=np.float32)
    weight = ms.Tensor(rng.standard_normal((c, 1, 3, 3), dtype=np.float32))
    native = nn.Conv2d(c, c, 3, stride, pad_mode="pad", padding=1, group=c, has_bias=False)
    fast = cpu_depthwise.DepthwiseConv3x3(c, stride, lib)
    results = []
    for conv in (native, fast):
        conv.weight.set_data(weight.copy())
        results.append([a.asnumpy() for a in _Grads(conv)(ms.Tensor(x), ms.Tensor(dy))])
    for name, want, got in zip(("output", "input gradient", "weight gradient"), *results, strict=True):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(), err_msg=name)


def _depthwise_cells(net: nn.Cell) -> int:
    return sum(isinstance(cell, cpu_depthwise.DepthwiseConv3x3) for _, cell in net.cells_and_names())


def _gradients(net: nn.Cell, x: ms.Tensor, y: ms.Tensor) -> list[np.ndarray]:
    net.set_train(True)
    loss = nn.WithLossCell(net, nn.CrossEntropyLoss())
    grad = ops.GradOperation(get_by_list=True)(loss, ms.ParameterTuple(net.trainable_params()))
    return [g.asnumpy() for g in grad(x, y)]


def test_whole_model_matches_native(monkeypatch: pytest.MonkeyPatch) -> None:
    _library()
    monkeypatch.setenv(cpu_depthwise.ENV_MODE, "native")
    native = create_model(SMALL, num_classes=10, drop_rate=0.0)
    monkeypatch.setenv(cpu_depthwise.ENV_MODE, "auto")
    fast = create_model(SMALL, num_classes=10, drop_rate=0.0)
    assert (_depthwise_cells(native), _depthwise_cells(fast)) == (0, 17)
    # the same parameters: names, shapes, order (checkpoints are interchangeable)
    assert [(p.name, p.shape) for p in fast.get_parameters()] == [
        (p.name, p.shape) for p in native.get_parameters()
    ]
    ms.load_param_into_net(fast, {p.name: p for p in native.get_parameters()}, strict_load=True)

    rng = np.random.default_rng(1)
    x = ms.Tensor(rng.standard_normal((4, 3, 33, 32), dtype=np.float32))  # odd size: stride 2 rounds up
    y = ms.Tensor(np.arange(4, dtype=np.int32))
    native.set_train(False)
    fast.set_train(False)
    np.testing.assert_allclose(fast(x).asnumpy(), native(x).asnumpy(), rtol=1e-4, atol=1e-5)

    want, got = _gradients(native, x, y), _gradients(fast, x, y)
    scale = max(np.abs(g).max() for g in want)
    names = [p.name for p in native.trainable_params()]
    for name, a, b in zip(names, want, got, strict=True):
        # BatchNorm betas after the linear projections have a zero gradient up to rounding: compare
        # against the largest gradient. Reordering the native's own batch moved gradients by 5e-5 of
        # it; the kernel differs from the native by ~5e-7.
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5 * scale, err_msg=name)


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
