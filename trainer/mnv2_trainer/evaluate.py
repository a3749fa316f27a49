"""Validation: top-1, top-5 and loss over a split, exact also when sharded over ranks.

Each rank sums ``(correct@1, correct@5, loss, images)`` over its (unpadded) shard; in a distributed
run the four sums are all-reduced as one float32 tensor (the CPU backend cannot all-reduce int32,
which is what breaks MindCV's train.py there) and divided once, so every image counts exactly once.
The loss is cross entropy with the training's label smoothing, like MindCV's eval network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one validation pass (fractions in 0..1)."""

    top1: float
    top5: float
    loss: float
    num_images: int


def batch_sums(logits: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0) -> np.ndarray:
    """``[correct@1, correct@k, summed loss, images]`` of one batch (``k = min(5, classes)``).

    Ties count as correct only if the label is among the first ``k`` of a stable descending sort,
    which is what MindSpore's ``Top1CategoricalAccuracy`` (argmax) does for top-1.
    """
    logits = logits.astype(np.float64)
    labels = labels.astype(np.int64).reshape(-1)
    n, classes = logits.shape
    k = min(5, classes)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    top1 = float(np.sum(order[:, 0] == labels))
    topk = float(np.sum(np.any(order == labels[:, None], axis=1)))
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(n), labels]
    smooth = -logp.mean(axis=1)
    loss = float(np.sum((1.0 - label_smoothing) * nll + label_smoothing * smooth))
    return np.array([top1, topk, loss, float(n)], dtype=np.float64)


def finish(sums: np.ndarray) -> EvalResult:
    """Turn summed ``[correct@1, correct@k, loss, images]`` into an :class:`EvalResult`."""
    n = float(sums[3])
    if n <= 0:
        raise ValueError("validation saw no images")
    return EvalResult(float(sums[0] / n), float(sums[1] / n), float(sums[2] / n), int(round(n)))


def evaluate(network: Any, dataset: Any, label_smoothing: float = 0.0, allreduce: Any = None) -> EvalResult:
    """Run ``network`` in inference mode over ``dataset`` (batches of ``(image, label)``).

    Args:
        network: the MobileNetV2 cell, wrapped by :func:`.input_norm.wrap_network` for the
            dataset's batch layout; put back into training mode by the caller if needed.
        dataset: a batched ``mindspore.dataset`` pipeline (a :class:`.data.Loader`'s ``dataset``).
        label_smoothing: for the reported loss.
        allreduce: ``distributed.create_allreduce()`` in distributed runs, else ``None``.
    """
    network.set_train(False)
    sums = np.zeros(4, dtype=np.float64)
    for images, labels in dataset.create_tuple_iterator(num_epochs=1):
        logits = network(images)
        sums += batch_sums(logits.asnumpy(), labels.asnumpy(), label_smoothing)
    if allreduce is not None:
        sums = allreduce(sums.astype(np.float32))
    return finish(sums)
