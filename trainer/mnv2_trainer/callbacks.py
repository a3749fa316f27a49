"""The training loop's callback, as MindCV's ``StateMonitor`` (``mindcv.utils.callbacks``) is to its loop.

:class:`EpochEnd` reports each step's progress, and at the end of each epoch averages the batch-norm
statistics of the replicas, validates, saves checkpoints (rank 0: every ``ckpt_save_interval``
epochs, keep-last-k, and the best; other ranks: their last one), logs one line and appends the
epoch's record to ``metrics.jsonl`` and the job's status.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from mindspore.train import Callback

from . import checkpoint as ckpt_lib
from .distributed import average_parameters, batchnorm_statistics
from .evaluate import evaluate
from .report import metrics_line

if TYPE_CHECKING:
    from .evaluate import EvalResult
    from .train import Env, RunState

_logger = logging.getLogger("mnv2_trainer")


class EpochEnd(Callback):
    """Validation, checkpoints, logging and reporting at the end of each epoch.

    Args:
        state: the run's mutable state (global step, best top-1, checkpoint paths, history), updated
            in place.
        env: where this process runs (rank, group size).
        steps_per_epoch: batches per epoch of this rank.
        sink: dataset sink mode (one step callback per epoch).
        epochs: the run's total epochs.
        lrs: the per-step learning rates.
        global_batch: images per step over all ranks.
        network: the network being trained (its batch-norm statistics are averaged).
        eval_network: the network validation runs (``network`` behind the input normalisation of the
            validation batches), or None without validation.
        train_cell: the train cell, whose parameters (network and optimizer) checkpoints hold.
        val_loader: the validation :class:`~mnv2_trainer.data.Loader`, or None.
        val_interval: validate every this many epochs (and after the last).
        label_smoothing: the loss's label smoothing, for the validation loss.
        allreduce: the all-reduce of a distributed run, else None.
        reporter: the job-status reporter of rank 0, else None.
        model_name: names the checkpoint files.
        save_dir: the checkpoint folder (``ckpt_save_dir``).
        save_interval: save every this many epochs (and after the last).
        keep: checkpoints kept (keep-last-k).
        log_interval: log every this many steps (0: never; not in sink mode).
    """

    def __init__(
        self,
        *,
        state: RunState,
        env: Env,
        steps_per_epoch: int,
        sink: bool,
        epochs: int,
        lrs: list[float],
        global_batch: int,
        network: Any,
        eval_network: Any,
        train_cell: Any,
        val_loader: Any,
        val_interval: int,
        label_smoothing: float,
        allreduce: Any,
        reporter: Any,
        model_name: str,
        save_dir: str,
        save_interval: int,
        keep: int,
        log_interval: int,
    ) -> None:
        super().__init__()
        self.state = state
        self.env = env
        self.spe = steps_per_epoch
        self.sink = sink
        self.epochs = epochs
        self.lrs = lrs
        self.global_batch = global_batch
        self.network = network
        self.eval_network = eval_network
        self.train_cell = train_cell
        self.val_loader = val_loader
        self.val_interval = val_interval
        self.label_smoothing = label_smoothing
        self.allreduce = allreduce
        self.reporter = reporter
        self.model_name = model_name
        self.save_dir = save_dir
        self.save_interval = save_interval
        self.keep = keep
        self.log_interval = log_interval
        self.losses: list[float] = []
        self.epoch_start = time.time()
        self.steps_in_epoch = 0
        self.verified = ckpt_lib.VerifiedCheckpoints()

    # ---- steps -----------------------------------------------------------------------------------
    def on_train_epoch_begin(self, run_context: Any) -> None:
        self.epoch_start = time.time()
        self.losses = []
        self.steps_in_epoch = 0

    def on_train_step_end(self, run_context: Any) -> None:
        cb = run_context.original_args()
        loss = float(cb.net_outputs.asnumpy()) if hasattr(cb.net_outputs, "asnumpy") else float("nan")
        self.losses.append(loss)
        self.steps_in_epoch = self.spe if self.sink else self.steps_in_epoch + 1
        step = self.state.global_step + self.steps_in_epoch
        if self.reporter is not None:
            elapsed = max(time.time() - self.epoch_start, 1e-9)
            # progress.epoch counts completed epochs (the CRD's column), so a running epoch
            # shows as the one before it until its last step.
            completed = cb.cur_epoch_num if self.steps_in_epoch >= self.spe else cb.cur_epoch_num - 1
            self.reporter.step(
                epoch=completed,
                step=step,
                loss=loss,
                lr=self.lrs[min(step, len(self.lrs)) - 1],
                images_per_second=self.steps_in_epoch * self.global_batch / elapsed,
            )
        if not self.sink and self.log_interval and self.steps_in_epoch % self.log_interval == 0:
            _logger.info(
                "epoch %d/%d step %d/%d loss %.4f lr %.6f",
                cb.cur_epoch_num,
                self.epochs,
                self.steps_in_epoch,
                self.spe,
                loss,
                self.lrs[step - 1],
            )

    # ---- the epoch's end -------------------------------------------------------------------------
    def on_train_epoch_end(self, run_context: Any) -> None:
        epoch = int(run_context.original_args().cur_epoch_num)
        seconds = time.time() - self.epoch_start
        state = self.state
        state.global_step = epoch * self.spe
        loss = sum(self.losses) / len(self.losses) if self.losses else float("nan")
        ips = self.spe * self.global_batch / seconds if seconds > 0 else None
        if self.allreduce is not None:  # every rank validates and saves the same model
            average_parameters(batchnorm_statistics(self.network), self.env.group_size, self.allreduce)
        result = self._validate(epoch)
        improved = result is not None and result.top1 > state.best_top1
        if improved:
            state.best_top1, state.best_epoch = result.top1, epoch
        self._save(epoch, improved)
        self._log_epoch(epoch, loss, result, seconds, ips)
        record = metrics_line(
            epoch=epoch,
            total_epochs=self.epochs,
            step=state.global_step,
            loss=loss,
            lr=self.lrs[state.global_step - 1],
            top1=result.top1 if result else None,
            top5=result.top5 if result else None,
            val_loss=result.loss if result else None,
            images_per_second=ips,
            epoch_seconds=seconds,
            latest=state.latest_path,
            best=state.best_path,
            best_top1=state.best_top1 if state.best_epoch is not None else None,
            best_epoch=state.best_epoch,
        )
        state.history.append(record)
        if self.reporter is not None:
            self.reporter.epoch_end(record)

    def _validate(self, epoch: int) -> EvalResult | None:
        """Validate when ``epoch`` is due (every ``val_interval`` and the last); None otherwise."""
        if self.val_loader is None or (epoch % self.val_interval != 0 and epoch != self.epochs):
            return None
        t0 = time.time()
        result = evaluate(self.eval_network, self.val_loader.dataset, self.label_smoothing, self.allreduce)
        self.train_cell.set_train(True)
        self.state.last_eval = result
        _logger.debug("validation took %.1fs", time.time() - t0)
        return result

    def _save(self, epoch: int, improved: bool) -> None:
        """Rank 0: the epoch's checkpoint when due (keep-last-k) and the best; other ranks: the last."""
        state = self.state
        meta = {
            "epoch_num": epoch,
            "step_num": state.global_step,
            "mnv2_steps_per_epoch": self.spe,
            "mnv2_global_batch_size": self.global_batch,
            "mnv2_num_epochs": self.epochs,
            "mnv2_best_top1": float(state.best_top1),
            "mnv2_best_epoch": int(state.best_epoch or 0),
        }
        model = self.model_name
        if self.env.rank == 0:
            if epoch % self.save_interval == 0 or epoch == self.epochs:
                path = os.path.join(self.save_dir, ckpt_lib.checkpoint_name(model, epoch, self.spe))
                state.latest_path = ckpt_lib.save_checkpoint(self.train_cell, path, meta)
                for old in ckpt_lib.prune_checkpoints(self.save_dir, model, self.keep, self.verified):
                    _logger.debug("removed old checkpoint %s", old)
            if improved:
                best = os.path.join(self.save_dir, ckpt_lib.best_name(model))
                state.best_path = ckpt_lib.save_checkpoint(self.train_cell, best, meta)
        elif epoch == self.epochs:
            rank_dir = os.path.join(self.save_dir, f"rank_{self.env.rank}")
            path = os.path.join(rank_dir, ckpt_lib.checkpoint_name(model, epoch, self.spe))
            state.latest_path = ckpt_lib.save_checkpoint(self.train_cell, path, meta)
            ckpt_lib.prune_checkpoints(rank_dir, model, 1, self.verified)

    def _log_epoch(
        self, epoch: int, loss: float, result: EvalResult | None, seconds: float, ips: float | None
    ) -> None:
        acc = (
            f" val top1 {result.top1:.4f} top5 {result.top5:.4f} loss {result.loss:.4f}"
            if result is not None
            else ""
        )
        latest = self.state.latest_path
        _logger.info(
            "epoch %d/%d step %d loss %.4f lr %.6f%s | %.1fs %.1f img/s%s",
            epoch,
            self.epochs,
            self.state.global_step,
            loss,
            self.lrs[self.state.global_step - 1],
            acc,
            seconds,
            ips or 0.0,
            f" | saved {os.path.basename(latest)}" if latest else "",
        )
