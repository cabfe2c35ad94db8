"""The one training loop, shared by `pretrain` and `finetune`.

Per step, in the order it happens: batch -> forward (autocast) -> loss -> backward, for each
micro-batch of the accumulation -> clip -> optimizer and schedule step -> log -> evaluate
(validation loss, perplexity, extra evaluators; early stopping) -> checkpoint -> stop if a
scheduler signalled (`preemption`).

Evaluations are logged to `metrics.jsonl` and the trackers `logger=` chose (`loggers`).

Under several processes (torchrun, accelerate launch) each trains on its rows of every global
batch (`distributed`); losses are summed across processes, every process evaluates the same
weights on the whole validation split (so all get the same numbers and stop together), and
the main process alone writes metrics and checkpoints.
"""

from __future__ import annotations

from contextlib import nullcontext
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from halluc_cli import rundir
from halluc_cli.config import TrainConfig
from halluc_cli.models import LanguageModel
from halluc_cli.training.batches import Batch
from halluc_cli.training.checkpoint import (
    load_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from halluc_cli.training.distributed import check_batch_split, gather_state, process_batch, scatter_state
from halluc_cli.training.loggers import JsonlLogger, Logger, Param
from halluc_cli.training.optim import build_optimizer, build_scheduler
from halluc_cli.training.preemption import Preempted, StopSignals, stop_signals
from halluc_cli.training.progress import ProgressReporter

# Extra numbers computed at each evaluation (e.g. finetune's train accuracy on known and
# unknown examples); each returns a dict merged into that evaluation's metrics line.
Evaluator = Callable[[LanguageModel], dict[str, float]]


class BatchSource(Protocol):
    """What the loop reads batches from: `TokenStream` for pretraining, QA examples for finetuning."""

    def next_batch(self) -> Batch: ...
    def one_pass(self, max_batches: int | None = None): ...
    def state_dict(self) -> dict[str, int]: ...
    def load_state_dict(self, state: dict[str, int]) -> None: ...


class LossTerm(Protocol):
    """A term added to the training loss (mitigation=distill's KL to a reference model)."""

    def count(self, batch: Batch) -> int:
        """How many positions of `batch` it scores: its sum is divided by that of the global batch."""
        ...

    def __call__(self, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        """Its sum over the positions of `batch` (this process's rows) it scores, given the
        model's `logits` (B, T, V) of them."""
        ...


@dataclass
class FitResult:
    """How a `fit` ended."""

    steps: int
    val_loss: float
    best_val_loss: float
    stopped_early: bool
    seconds: float


class Trainer:
    """Trains a `LanguageModel` and keeps `run_dir/checkpoint`, `run_dir/metrics.jsonl` and the
    logs of the `trackers` it is given."""

    def __init__(
        self,
        model: LanguageModel,
        tokenizer: PreTrainedTokenizerBase,
        cfg: TrainConfig,
        accelerator: Accelerator,
        run_dir: Path,
        train_data: BatchSource,
        valid_data: BatchSource,
        evaluators: tuple[Evaluator, ...] = (),
        parameters: list[torch.nn.Parameter] | None = None,
        on_step: Callable[[int], None] | None = None,
        trackers: Sequence[Logger] = (),
        hparams: dict[str, Param] | None = None,
        loss_terms: Sequence[LossTerm] = (),
    ) -> None:
        """`parameters`: what the optimizer holds (default: the trainable ones); `on_step(step)`
        runs before each step (gradual unfreezing changes what trains); `trackers` log each
        evaluation besides metrics.jsonl, and `hparams` (the run's settings) at the start;
        `loss_terms` add to the training loss (not to the validation loss)."""
        check_batch_split(cfg.batch_size, accelerator.num_processes)
        self.cfg, self.accelerator, self.tokenizer = cfg, accelerator, tokenizer
        self.run_dir, self.train_data, self.valid_data = run_dir, train_data, valid_data
        self.evaluators, self.on_step, self.loss_terms = evaluators, on_step, tuple(loss_terms)
        self.checkpoint_dir = run_dir / rundir.CHECKPOINT_DIR
        self.best_dir = run_dir / rundir.BEST_DIR
        self.metrics_log = JsonlLogger(run_dir / rundir.METRICS_FILE)
        # The main process alone logs: the others compute the same numbers.
        self.loggers: list[Logger] = [self.metrics_log, *trackers] if accelerator.is_main_process else []
        self.hparams = hparams or {}
        if parameters is None:
            parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(parameters, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.model, self.optimizer = accelerator.prepare(model, self.optimizer)
        # Looked up once: `accelerator.unwrap_model` probes the file system for optional
        # packages (deepspeed) at every call, and `_loss` needs the model every micro-batch.
        # Outside torch.compile too (device.compile): checkpoints and evaluators get the module itself.
        self._unwrapped: LanguageModel = accelerator.unwrap_model(self.model, keep_torch_compile=False)
        self.step = 0
        self.best_val_loss = math.inf
        self.evals_since_best = 0
        self.last_val_loss = math.nan
        self.last_metrics: dict[str, Any] = {}  # the latest evaluation's metrics line
        self.losses_since_eval: list[float] = []  # averaged into the next eval's train_loss
        self.carry = None  # the recurrent state carried from batch to batch (this process's rows)

    @property
    def unwrapped(self) -> LanguageModel:
        """The model itself, outside any distributed wrapper."""
        return self._unwrapped

    def fit(self, resume_from: Path | None = None) -> FitResult:
        """Train to `max_steps` (or early stopping), from scratch or from a checkpoint."""
        if resume_from is not None:
            self._restore(resume_from)
        self._start_logs()
        failed = True
        try:
            result = self._fit()
            failed = False
            return result
        finally:
            for logger in self.loggers:
                logger.close(failed)

    def _start_logs(self) -> None:
        """Open every log at the current step (0, or the checkpoint's on resume)."""
        for logger in self.loggers:
            logger.start(self.step)
            if self.hparams:
                logger.log_hparams(self.hparams)
        self.last_metrics = self.metrics_log.last_metrics

    def _fit(self) -> FitResult:
        started, stopped_early = time.perf_counter(), False
        show_progress = self.cfg.progress and self.accelerator.is_main_process
        with ProgressReporter(self.cfg.max_steps, self.step, enabled=show_progress) as progress, stop_signals() as stop:
            while self.step < self.cfg.max_steps:
                step_started = time.perf_counter()
                if self.on_step is not None:
                    self.on_step(self.step)
                loss, tokens = self._train_step()
                self.step += 1
                self.losses_since_eval.append(loss)
                tokens_per_s = tokens / (time.perf_counter() - step_started)
                progress.update(self.step, loss=loss, tokens_per_s=tokens_per_s)
                if self.step % self.cfg.eval_every == 0 or self.step == self.cfg.max_steps:
                    train_loss = sum(self.losses_since_eval) / len(self.losses_since_eval)
                    self.losses_since_eval.clear()
                    metrics = self._evaluate(train_loss, tokens_per_s)
                    self.last_val_loss = metrics["val_loss"]
                    progress.log_eval(metrics)
                    stopped_early = self._should_stop(self.last_val_loss)
                signum = self._stop_signal(stop)
                if self.step % self.cfg.save_every == 0 or self.step == self.cfg.max_steps or stopped_early or signum:
                    self._save()
                if signum:
                    raise Preempted(
                        signum, self.step, self.checkpoint_dir, stop.replaced[signum], self.accelerator.is_main_process
                    )
                if stopped_early:
                    break
        seconds = time.perf_counter() - started
        return FitResult(self.step, self.last_val_loss, self.best_val_loss, stopped_early, seconds)

    def _train_step(self) -> tuple[float, int]:
        """One optimizer step over `grad_accum` global micro-batches; returns (mean loss, tokens)."""
        self.model.train()
        total_loss, tokens = torch.zeros((), device=self.accelerator.device), 0
        for micro_step in range(self.cfg.grad_accum):
            batch = self.train_data.next_batch()
            last = micro_step == self.cfg.grad_accum - 1
            # Gradients are averaged across processes once per step, not per micro-batch.
            with self.accelerator.no_sync(self.model) if not last else nullcontext():
                loss = self._loss(batch) / self.cfg.grad_accum
                # DDP averages gradients over processes; each loss is a share of a sum.
                self.accelerator.backward(loss * self.accelerator.num_processes)
            total_loss += loss.detach()
            tokens += batch.input_ids.numel()
        if self.cfg.clip_grad:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.accelerator.reduce(total_loss, "sum").item(), tokens

    def _loss(self, batch: Batch) -> torch.Tensor:
        """This process's share of the mean loss over the global `batch`'s scored tokens:
        the shares of all processes add up to what one process computes on the whole batch."""
        device = self.accelerator.device
        scored = max(batch.num_tokens, 1)
        # Each term is a mean over its positions of the global batch, as the loss is over its tokens.
        term_counts = [max(term.count(batch), 1) for term in self.loss_terms]
        batch = process_batch(batch, self.accelerator)
        if batch.new_sequence:
            self.carry = None
        with self.accelerator.autocast():
            logits, carry = self.model(
                batch.input_ids.to(device, non_blocking=True),
                self.carry,
                None if batch.attention_mask is None else batch.attention_mask.to(device, non_blocking=True),
            )
            extra = sum(term(batch, logits) / count for term, count in zip(self.loss_terms, term_counts))
        self.carry = self.unwrapped.detach_state(carry)
        return _cross_entropy(logits, batch.labels.to(device, non_blocking=True), reduction="sum") / scored + extra

    @torch.no_grad()
    def mean_loss(self, data: BatchSource, max_batches: int | None = None) -> float:
        """Mean loss per scored token over one pass of `data` (perplexity = exp of it).

        Every process scores all of `data` with the same weights, so all get the same number.
        """
        self.model.eval()
        device, total, count, carry = self.accelerator.device, 0.0, 0, None
        for batch in data.one_pass(max_batches):
            carry = None if batch.new_sequence else carry
            with self.accelerator.autocast():
                logits, carry = self.unwrapped(
                    batch.input_ids.to(device),
                    carry,
                    None if batch.attention_mask is None else batch.attention_mask.to(device),
                )
            labels = batch.labels.to(device)
            scored = int((labels != -100).sum())
            total += _cross_entropy(logits, labels).item() * scored
            count += scored
        self.model.train()
        return total / max(count, 1)

    def _evaluate(self, train_loss: float, tokens_per_s: float) -> dict[str, Any]:
        val_loss = self.mean_loss(self.valid_data, self.cfg.eval_batches)
        metrics: dict[str, Any] = {
            "step": self.step,
            "train_loss": round(train_loss, 6),
            "val_loss": round(val_loss, 6),
            "val_ppl": round(math.exp(min(val_loss, 50.0)), 4),
            "tokens_per_s": round(tokens_per_s, 1),
            "lr": self.scheduler.get_last_lr()[0],
        }
        for evaluator in self.evaluators:
            metrics.update(evaluator(self.unwrapped))
        self.last_metrics = metrics
        for logger in self.loggers:
            logger.log_metrics(self.step, metrics)
        return metrics

    def _should_stop(self, val_loss: float) -> bool:
        """Early stopping: true after `patience` evaluations without a better validation loss."""
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.evals_since_best = val_loss, 0
            if self.cfg.keep_best:
                self._save_best()
            return False
        self.evals_since_best += 1
        patience = self.cfg.early_stopping_patience
        return patience is not None and self.evals_since_best >= patience

    def _stop_signal(self, stop: StopSignals) -> int:
        """The stop signal any process has received (0: none), so that all stop after the same step."""
        if self.accelerator.num_processes == 1:
            return stop.received  # no one to agree with: spare the device a sync per step
        received = torch.tensor(stop.received, device=self.accelerator.device)
        return int(self.accelerator.reduce(received, "max"))

    def _save(self) -> None:
        """The main process writes the checkpoint; the others wait until it is complete, so
        that none runs ahead or exits (preemption) while it is being written."""
        carry = gather_state(self.carry)  # every process takes part
        if self.accelerator.is_main_process:
            save_checkpoint(self.checkpoint_dir, self.unwrapped, self.tokenizer, self._training_state(carry))
        self.accelerator.wait_for_everyone()

    def _training_state(self, carry: Any) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data": self.train_data.state_dict(),
            "rng": rng_state(),
            "carry": carry,
            "best_val_loss": self.best_val_loss,
            "last_val_loss": self.last_val_loss,
            "evals_since_best": self.evals_since_best,
            "losses_since_eval": self.losses_since_eval,
            # fp16's loss scale: a resumed run that started from the initial scale again
            # would skip steps on overflow until it found it
            "grad_scaler": None if self.accelerator.scaler is None else self.accelerator.scaler.state_dict(),
        }

    def _save_best(self) -> None:
        """The model at its best validation loss so far: the early-stopping point."""
        if self.accelerator.is_main_process:
            save_checkpoint(self.best_dir, self.unwrapped, self.tokenizer)  # weights only: never resumed from

    def _restore(self, directory: Path) -> None:
        """Continue exactly where the checkpoint in `directory` left off (weights already loaded)."""
        state = load_training_state(directory)
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.train_data.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        self.carry = scatter_state(state["carry"], self.accelerator)
        self.best_val_loss = float(state["best_val_loss"])
        self.last_val_loss = float(state["last_val_loss"])
        self.evals_since_best = int(state["evals_since_best"])
        self.losses_since_eval = list(state["losses_since_eval"])
        if self.accelerator.scaler is not None and state.get("grad_scaler"):
            self.accelerator.scaler.load_state_dict(state["grad_scaler"])


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    # In fp32 whatever the autocast dtype: the softmax over a large vocabulary needs the range.
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction=reduction)
