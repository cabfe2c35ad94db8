"""Progress of a training run: a rich bar on a terminal, plain log lines elsewhere.

Batch jobs (SLURM logs, CI) are not terminals; there a line every ~10% of the run keeps
the log readable instead of filling it with redraws.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, soft_wrap=True)


class ProgressReporter:
    """Shows step, loss, tokens/s and ETA while training; prints each evaluation."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True, description: str = "train") -> None:
        self.total, self.start, self.enabled = total_steps, start_step, enabled
        self.description = description
        self.interactive = enabled and console.is_terminal
        self.log_every = max(1, (total_steps - start_step) // 10)
        self._progress: Progress | None = None
        self._started = time.perf_counter()

    def __enter__(self) -> "ProgressReporter":
        if self.interactive:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[tokens_per_s]:,.0f} tok/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self.description, total=self.total, completed=self.start, loss=float("nan"), tokens_per_s=0.0
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        """Record that `step` finished with this loss and speed."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=loss, tokens_per_s=tokens_per_s)
        elif self.enabled and ((step - self.start) % self.log_every == 0 or step == self.total):
            elapsed = time.perf_counter() - self._started
            eta = elapsed / max(step - self.start, 1) * (self.total - step)
            console.print(
                f"{self.description} step {step}/{self.total}  loss {loss:.4f}  "
                f"{tokens_per_s:,.0f} tok/s  ETA {eta:,.0f}s",
                highlight=False,
            )

    def log_eval(self, metrics: dict[str, Any]) -> None:
        """Print one evaluation's metrics."""
        if not self.enabled:
            return
        shown = "  ".join(f"{key} {_short(value)}" for key, value in metrics.items())
        console.print(f"[dim]eval[/dim] {shown}", highlight=False)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)
