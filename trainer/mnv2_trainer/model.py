"""MobileNetV2 (Sandler et al., 2018) in MindSpore, parameter-for-parameter compatible with MindCV.

The network reproduces MindCV 0.3.0's ``mindcv.models.mobilenetv2`` exactly: the same cells in the
same order, hence the same parameter names (``features.3.layers.0.weight``, ``classifier.1.bias``,
...) and shapes, the same forward computation and the same weight initialisation. Checkpoints
therefore move both ways between MindCV and this trainer without renaming. MindCV is not imported.

What differs from MindCV is checkpoint loading: MindCV's ``load_param_into_net`` silently keeps random
weights for any parameter it cannot match, and its ``create_model`` ignores a checkpoint path that does
not exist. Here every network parameter must be found with the right shape, or loading raises
:class:`CheckpointMismatchError` that lists what is wrong and how to fix it.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field

import mindspore as ms
import mindspore.common.initializer as init
import numpy as np
from mindspore import Tensor, nn, ops

from . import cpu_depthwise
from .architecture import INVERTED_RESIDUAL_SETTING, make_divisible
from .model_names import MODEL_NAMES, UnknownModelError, model_variant

__all__ = [
    "MODEL_NAMES",
    "CheckpointMismatchError",
    "InvertedResidual",
    "LoadResult",
    "MobileNetV2",
    "UnknownModelError",
    "create_model",
    "load_weights",
    "make_divisible",
    "param_count",
]

#: Dropout before the classifier, as in MindCV ("confirmed by paper authors").
DEFAULT_DROP_RATE = 0.2

# Network parameters live under these two cells; anything else in a checkpoint (optimizer moments,
# global_step, learning_rate, loss-scale state, EMA copies, ...) is training state, not weights.
_NETWORK_PREFIXES = ("features.", "classifier.")
_CLASSIFIER_PREFIX = "classifier."


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, group: int = 1) -> nn.Conv2d:
    """A bias-free convolution with symmetric "same" padding, as MindCV builds them.

    On CPU, depthwise 3x3 convolutions use :mod:`.cpu_depthwise`'s C++ kernel when it is available
    (MindSpore's own CPU kernel for them is ~100x slower); it is an ``nn.Conv2d`` with the same
    parameter, so names, shapes, initialisation and checkpoints do not change.
    """
    if kernel == 3 and group == in_ch == out_ch:
        fast = cpu_depthwise.depthwise_conv3x3(in_ch, stride)
        if fast is not None:
            return fast
    return nn.Conv2d(
        in_ch,
        out_ch,
        kernel,
        stride,
        pad_mode="pad",
        padding=kernel // 2,
        group=group,
        has_bias=False,
    )


class InvertedResidual(nn.Cell):
    """Inverted residual block: 1x1 expand -> 3x3 depthwise -> 1x1 linear projection.

    The expansion convolution is omitted when ``expand_ratio`` is 1, which shifts the indices inside
    ``layers`` (and so the parameter names) exactly as in MindCV. The identity shortcut is used when
    the block keeps both resolution and channel count.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: stride of the depthwise convolution, 1 or 2.
        expand_ratio: hidden channels = ``round(in_channels * expand_ratio)``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = round(in_channels * expand_ratio)
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Cell] = []
        if expand_ratio != 1:
            layers += [_conv(in_channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            _conv(hidden, hidden, 3, stride, group=hidden),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            _conv(hidden, out_channels, 1),
            nn.BatchNorm2d(out_channels),
        ]
        self.layers = nn.SequentialCell(layers)

    def construct(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.layers(x)
        return self.layers(x)


class MobileNetV2(nn.Cell):
    """MobileNetV2 classifier with MindCV's layout.

    ``features`` is one flat sequence: stem conv/BN/ReLU6 (indices 0-2), 17 inverted residual blocks
    (3-19), last 1x1 conv/BN/ReLU6 (20-22). The head is global average pooling, then ``classifier``
    = Dropout (index 0, no parameters) and Dense (index 1).

    Args:
        alpha: width multiplier; channel counts are ``make_divisible(c * alpha, round_nearest)``; the
            last conv keeps at least 1280 channels.
        round_nearest: channel counts are multiples of this.
        in_channels: channels of the input images.
        num_classes: outputs of the classifier.
        drop_rate: dropout probability before the classifier (MindCV: always 0.2).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        round_nearest: int = 8,
        in_channels: int = 3,
        num_classes: int = 1000,
        drop_rate: float = DEFAULT_DROP_RATE,
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        channels = make_divisible(32 * alpha, round_nearest)
        last_channels = make_divisible(1280 * max(1.0, alpha), round_nearest)

        features: list[nn.Cell] = [_conv(in_channels, channels, 3, 2), nn.BatchNorm2d(channels), nn.ReLU6()]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out = make_divisible(c * alpha, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(channels, out, s if i == 0 else 1, expand_ratio=t))
                channels = out
        features += [_conv(channels, last_channels, 1), nn.BatchNorm2d(last_channels), nn.ReLU6()]

        self.num_classes = num_classes
        self.num_features = last_channels
        self.features = nn.SequentialCell(features)
        self.classifier = nn.SequentialCell([nn.Dropout(p=drop_rate), nn.Dense(last_channels, num_classes)])
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        """MindCV's initialisation: He-normal convs (fan-out), unit/zero BN, N(0, 0.01) classifier."""
        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Conv2d):
                fan_out = cell.kernel_size[0] * cell.kernel_size[1] * cell.out_channels
                sigma = math.sqrt(2.0 / fan_out)
                cell.weight.set_data(
                    init.initializer(init.Normal(sigma=sigma), cell.weight.shape, cell.weight.dtype)
                )
                if cell.bias is not None:
                    cell.bias.set_data(init.initializer("zeros", cell.bias.shape, cell.bias.dtype))
            elif isinstance(cell, nn.BatchNorm2d):
                cell.gamma.set_data(init.initializer("ones", cell.gamma.shape, cell.gamma.dtype))
                cell.beta.set_data(init.initializer("zeros", cell.beta.shape, cell.beta.dtype))
            elif isinstance(cell, nn.Dense):
                cell.weight.set_data(
                    init.initializer(init.Normal(sigma=0.01), cell.weight.shape, cell.weight.dtype)
                )
                if cell.bias is not None:
                    cell.bias.set_data(init.initializer("zeros", cell.bias.shape, cell.bias.dtype))

    def forward_features(self, x: Tensor) -> Tensor:
        """Feature map before pooling, shape (N, num_features, H/32, W/32)."""
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """Global average pooling, dropout and the classifier."""
        x = ops.mean(x, axis=(2, 3), keep_dims=False)
        return self.classifier(x)

    def construct(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the network; the message lists the differences and the fix."""


@dataclass
class LoadResult:
    """What :func:`load_weights` did.

    Attributes:
        loaded: names of the network parameters set from the checkpoint.
        skipped_head: classifier parameters left at their initial values (``ignore_classifier``).
        ignored: checkpoint entries that are training state, not weights (``moments.*``,
            ``global_step``, ``learning_rate``, ...).
    """

    loaded: list[str] = field(default_factory=list)
    skipped_head: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _read_checkpoint(path: str | os.PathLike[str]) -> dict[str, ms.Parameter]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist (or is not a file)")
    try:
        return ms.load_checkpoint(path)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError with terse text
        raise CheckpointMismatchError(f"cannot read checkpoint {path!r}: {exc}") from exc


def _is_network_entry(name: str) -> bool:
    return name.startswith(_NETWORK_PREFIXES)


def _shape(param: ms.Parameter) -> tuple[int, ...]:
    return tuple(int(d) for d in param.shape)


def load_weights(
    net: nn.Cell,
    checkpoint_path: str | os.PathLike[str],
    *,
    ignore_classifier: bool = False,
) -> LoadResult:
    """Load a checkpoint's weights into ``net``, strictly.

    Accepts a pure network checkpoint (ours or MindCV's, e.g. ``mobilenet_v2_075-bd7bd4c4.ckpt``) and a
    train checkpoint that also holds optimizer state (``moments.*``, ``global_step``,
    ``learning_rate``, ...): entries outside ``features.*``/``classifier.*`` are ignored and listed in
    the result. Optimizer state is the trainer's business, not this function's.

    Args:
        net: the network, usually from :func:`create_model`.
        checkpoint_path: a MindSpore ``.ckpt`` file.
        ignore_classifier: keep the network's own (freshly initialised) ``classifier.*`` and load
            everything else, for fine-tuning a checkpoint to a different number of classes.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointMismatchError: the file is unreadable, no network parameter is found, a parameter
            is missing, has another shape, or the checkpoint has network parameters the net lacks.
    """
    ckpt = _read_checkpoint(checkpoint_path)
    params = {p.name: p for p in net.get_parameters()}
    if ignore_classifier:
        wanted = {k: v for k, v in params.items() if not k.startswith(_CLASSIFIER_PREFIX)}
    else:
        wanted = params
    result = LoadResult(
        skipped_head=sorted(k for k in params if k not in wanted),
        ignored=sorted(k for k in ckpt if not _is_network_entry(k)),
    )

    problems: list[str] = []
    missing = [k for k in wanted if k not in ckpt]
    unexpected = [k for k in ckpt if _is_network_entry(k) and k not in params]
    shape_diff = [
        (k, _shape(params[k]), _shape(ckpt[k]))
        for k in wanted
        if k in ckpt and _shape(params[k]) != _shape(ckpt[k])
    ]
    found = len(wanted) - len(missing)
    if found == 0:
        sample = ", ".join(list(ckpt)[:5]) or "(empty)"
        raise CheckpointMismatchError(
            f"checkpoint {os.fspath(checkpoint_path)!r} holds none of the network's {len(wanted)} parameters "
            f"(first entries: {sample}); it is not a MobileNetV2 checkpoint with MindCV's parameter names"
        )
    if missing:
        hints = []
        for k in missing[:5]:
            close = difflib.get_close_matches(k, list(ckpt), n=1)
            hints.append(f"{k}" + (f" (checkpoint has {close[0]})" if close else ""))
        problems.append(f"{len(missing)} network parameters missing from the checkpoint: {', '.join(hints)}")
        if all(k.startswith(_CLASSIFIER_PREFIX) for k in missing):
            problems.append(
                "the checkpoint has no classifier: load it with ignore_classifier=True to train a new head"
            )
    if unexpected:
        problems.append(
            f"{len(unexpected)} checkpoint parameters the network does not have: {', '.join(unexpected[:5])}"
        )
    if shape_diff:
        listed = ", ".join(f"{k} network {a} vs checkpoint {b}" for k, a, b in shape_diff[:5])
        problems.append(f"{len(shape_diff)} shape mismatches: {listed}")
        if all(k.startswith(_CLASSIFIER_PREFIX) for k, _, _ in shape_diff):
            ckpt_classes = _shape(ckpt["classifier.1.bias"])[0] if "classifier.1.bias" in ckpt else "?"
            problems.append(
                f"only the classifier differs: the checkpoint has {ckpt_classes} classes, the network "
                f"{getattr(net, 'num_classes', '?')}; set num_classes={ckpt_classes} to use it as is, or "
                "ignore_classifier=True to fine-tune with a new head"
            )
        else:
            problems.append("is the model name (width) the one the checkpoint was trained with?")
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {os.fspath(checkpoint_path)!r} does not fit the network: " + "; ".join(problems)
        )

    to_load = {}
    for name, target in wanted.items():
        value = ckpt[name]
        if value.dtype != target.dtype:  # e.g. a float16 export; keep the network's dtype
            value = ms.Parameter(Tensor(value.asnumpy().astype(ms.dtype_to_nptype(target.dtype))), name=name)
        to_load[name] = value
    not_loaded, _ = ms.load_param_into_net(net, to_load, strict_load=True)
    not_loaded = [k for k in not_loaded if k in wanted]  # a skipped head is reported as not loaded
    if not_loaded:  # cannot happen after the checks above, unless MindSpore changes its rules
        raise CheckpointMismatchError(f"MindSpore did not load: {', '.join(not_loaded[:5])}")
    result.loaded = sorted(to_load)
    return result


def create_model(
    name: str,
    num_classes: int = 1000,
    drop_rate: float | None = DEFAULT_DROP_RATE,
    checkpoint_path: str | os.PathLike[str] | None = None,
    in_channels: int = 3,
    *,
    ignore_classifier: bool = False,
) -> MobileNetV2:
    """Build a MobileNetV2 by MindCV name and optionally load weights.

    Args:
        name: one of :data:`MODEL_NAMES`, e.g. ``mobilenet_v2_075``.
        num_classes: outputs of the classifier.
        drop_rate: dropout before the classifier; ``None`` means MindCV's 0.2 (MindCV's config
            default for ``drop_rate`` is ``None`` and its MobileNetV2 always uses 0.2).
        checkpoint_path: a ``.ckpt`` to load with :func:`load_weights`; ``None`` or ``""`` keeps the
            initial weights.
        in_channels: channels of the input images.
        ignore_classifier: see :func:`load_weights`.

    Raises:
        UnknownModelError: the name is not supported (the message names the closest ones).
        FileNotFoundError, CheckpointMismatchError: see :func:`load_weights`.
    """
    alpha, _resolution = model_variant(name)
    net = MobileNetV2(
        alpha=alpha,
        in_channels=in_channels,
        num_classes=num_classes,
        drop_rate=DEFAULT_DROP_RATE if drop_rate is None else drop_rate,
    )
    if checkpoint_path:
        load_weights(net, checkpoint_path, ignore_classifier=ignore_classifier)
    return net


def param_count(net: nn.Cell) -> tuple[int, int]:
    """Number of parameter tensors and of values in them (BN statistics included, like MindCV's 2.66M)."""
    params = list(net.get_parameters())
    return len(params), int(sum(np.prod(p.shape, dtype=np.int64) for p in params))
