"""The epoch loop: a compiled training cell, one data pipeline per epoch, MindSpore callbacks.

Why not ``Model.train``: it iterates one pipeline across all epochs, so the shuffle (and
augmentation) of epoch ``e`` depends on the epochs before it, and a run resumed at epoch ``e``
could not see the same batches as the uninterrupted run. Here epoch ``e`` reads a fresh pipeline
seeded with ``seed + e``, which makes every epoch's data a function of ``(seed, e)`` alone.

The loop drives ordinary ``mindspore.train.Callback`` objects through a ``RunContext``, with the
keys ``Model.train`` provides (``train_network``, ``epoch_num``, ``batch_num``,
``cur_epoch_num``, ``cur_step_num``, ``net_outputs``) plus ``loss``, ``lr``, ``step_time``,
``step_in_epoch``, ``train_loss`` (epoch mean, at epoch end), ``start_epoch``, ``start_step``,
``rank``, ``world_size``; callbacks add their own (``eval``, ``eval_time``, ``history``). So
callbacks written for ``Model.train`` that only read those keys (e.g.
``tkfac_ms.DampingDiagnostics``) work here too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import mindspore.dataset as ds
import numpy as np
from mindspore import dtype as mstype
from mindspore import nn, ops
from mindspore.train import Callback, RunContext

__all__ = ["RunParams", "Trainer", "EvalNetwork", "evaluate"]


class RunParams(dict):
    """The callbacks' shared state: a dict with attribute access (like ``Model``'s)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


class EvalNetwork(nn.Cell):
    """``(data, label) -> (summed cross-entropy, number of correct top-1 predictions)``."""

    def __init__(self, network: nn.Cell):
        super().__init__(auto_prefix=False)
        self.network = network
        self.loss = nn.CrossEntropyLoss(reduction="sum")

    def construct(self, data, label):
        """Loss sum and correct count of one batch."""
        logits = self.network(data)
        correct = ops.cast(ops.argmax(logits, dim=-1) == label, mstype.float32).sum()
        return self.loss(logits, label), correct


def evaluate(
    eval_network: EvalNetwork, dataset: ds.Dataset, max_steps: int | None = None
) -> dict[str, float]:
    """Mean loss and top-1 accuracy of the network (in inference mode) over ``dataset``.

    Leaves the network in inference mode; the caller switches its training cell back.

    Returns:
        ``{"test_loss", "test_acc", "test_samples"}`` (accuracy as a fraction).
    """
    eval_network.set_train(False)
    loss_sum, correct, count = 0.0, 0.0, 0
    for i, (data, label) in enumerate(dataset.create_tuple_iterator(num_epochs=1)):
        if max_steps is not None and i >= max_steps:
            break
        loss, hits = eval_network(data, label)
        loss_sum += float(loss.asnumpy())
        correct += float(hits.asnumpy())
        count += int(label.shape[0])
    if count == 0:
        raise ValueError("the evaluation data set yielded no batch")
    return {"test_loss": loss_sum / count, "test_acc": correct / count, "test_samples": count}


class Trainer:
    """Run epochs ``start_epoch .. epochs - 1`` of a training cell.

    Args:
        train_network: ``cell(data, label) -> loss``, one optimizer step per call.
        train_data: ``epoch -> dataset`` of ``(image, label)`` batches for that epoch (0-based).
        epochs: the run's total number of epochs.
        steps_per_epoch: steps taken per epoch (at most the pipeline's batches).
        lr: per-step learning rates (for the progress output), indexed by the run's step.
        callbacks: ``mindspore.train.Callback`` objects, called in order.
        start_epoch: completed epochs (resume).
        start_step: completed steps (resume).
        extra: more keys for the callbacks' ``RunParams``.
    """

    def __init__(
        self,
        train_network: nn.Cell,
        train_data: Callable[[int], ds.Dataset],
        epochs: int,
        steps_per_epoch: int,
        lr: Sequence[float],
        callbacks: Sequence[Callback] = (),
        start_epoch: int = 0,
        start_step: int = 0,
        extra: dict[str, Any] | None = None,
    ):
        self.train_network = train_network
        self.train_data = train_data
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.lr = list(lr)
        self.callbacks = list(callbacks)
        self.params = RunParams(
            train_network=train_network,
            network=train_network,
            epoch_num=epochs,
            batch_num=steps_per_epoch,
            cur_epoch_num=start_epoch,
            cur_step_num=start_step,
            start_epoch=start_epoch,
            start_step=start_step,
            dataset_sink_mode=False,
            **(extra or {}),
        )

    def _call(self, hook: str, context: RunContext) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(context)

    def run(self) -> RunParams:
        """Train; returns the final callback state (``history`` etc.)."""
        p = self.params
        context = RunContext(p)
        self._call("on_train_begin", context)
        for epoch in range(p.start_epoch, self.epochs):
            p.cur_epoch_num = epoch + 1
            self.train_network.set_train(True)
            data = self.train_data(epoch)
            self._call("on_train_epoch_begin", context)
            losses = []
            iterator = data.create_tuple_iterator(num_epochs=1)
            tick = time.perf_counter()
            for i, (x, y) in enumerate(iterator):
                if i >= self.steps_per_epoch:
                    break
                p.step_in_epoch = i + 1
                self._call("on_train_step_begin", context)
                loss = self.train_network(x, y)
                p.loss = float(loss.asnumpy())  # waits for the step: honest step times
                now = time.perf_counter()
                p.step_time, tick = now - tick, now
                p.lr = self.lr[min(p.cur_step_num, len(self.lr) - 1)]
                p.cur_step_num += 1
                p.net_outputs = loss
                losses.append(p.loss)
                self._call("on_train_step_end", context)
                if context.get_stop_requested():
                    break
            if hasattr(iterator, "stop"):
                iterator.stop()
            if not losses:
                raise ValueError(f"epoch {epoch + 1}: the training data set yielded no batch")
            p.train_loss = float(np.mean(losses))
            self._call("on_train_epoch_end", context)
            if context.get_stop_requested():
                break
        self._call("on_train_end", context)
        return p
