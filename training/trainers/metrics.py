"""A run's metrics: :class:`MetricsLogger` keeps each step's scalars, averages them at log steps
with the throughput figures, and writes them (TensorBoard, Weights & Biases, ``metrics.jsonl``).

:meth:`Trainer.run <vividhead.training.trainers.runtime.Trainer.run>` hands it every step's
scalars (:meth:`MetricsLogger.record`) and asks for the interval's averages at log steps
(:meth:`MetricsLogger.summarize`); trainers write extra scalars and histograms through
``Trainer.log_scalars`` / ``Trainer.log_histogram``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Per-step scalars, interval averages and their writers.

    Scalars stay on the device until a log step: no host sync per step besides the trainer's own
    finiteness check, so the host queues the next step while the device runs this one. Rank 0
    writes; every rank keeps :attr:`history` (each step's values as floats).

    Args:
        out: the run folder (``metrics.jsonl``, ``tensorboard/``).
        is_main: this rank writes.
        device: the training device (synchronised at log steps; peak memory on CUDA).
    """

    def __init__(self, out: Path, is_main: bool, device: torch.device) -> None:
        self.out = out
        self.is_main = is_main
        self.device = device
        self.writer = None
        self.history: list[dict[str, float]] = []
        self.peak_flops: float | None = None
        self._pending: list[dict[str, torch.Tensor]] = []
        self._t_data = 0.0
        self._t_interval = time.perf_counter()

    def open(self, peak_flops: float | None = None, wandb_project: str | None = None,
             config: dict[str, Any] | None = None) -> None:
        """Open the writers (rank 0): TensorBoard when installed, and Weights & Biases when
        ``wandb_project`` is set. ``peak_flops``: the device's peak for MFU (None: MFU not shown)."""
        self.peak_flops = peak_flops
        if not self.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is in the train extra; logs still go to metrics.jsonl
            logger.warning("tensorboard not installed: scalars go to metrics.jsonl only")
            return
        self.writer = SummaryWriter(str(self.out / "tensorboard"))
        if wandb_project:
            import wandb

            wandb.init(project=wandb_project, config=config, dir=str(self.out), sync_tensorboard=True,
                       resume="allow")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    # -- writing ------------------------------------------------------------------------------------
    def write(self, step: int, scalars: dict[str, float]) -> None:
        """TensorBoard + ``metrics.jsonl`` (rank 0)."""
        if not self.is_main:
            return
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, step)
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, **scalars}) + "\n")

    def histogram(self, step: int, name: str, values: list[float]) -> None:
        """A TensorBoard histogram (rank 0)."""
        if self.is_main and self.writer is not None and values:
            self.writer.add_histogram(name, torch.tensor(values), step)

    # -- the run loop's side --------------------------------------------------------------------------
    def start_interval(self) -> None:
        """Start timing an interval (before the first step, and after each log step's own work:
        validation and previews do not count as step time)."""
        self._t_data = 0.0
        self._t_interval = time.perf_counter()

    def data_wait(self, seconds: float) -> None:
        """Time the loop spent waiting for a batch (the interval's ``perf/data_wait_share``)."""
        self._t_data += seconds

    def record(self, scalars: dict[str, Any]) -> None:
        """One step's scalars (tensors or numbers; keys starting with ``_`` are not logged)."""
        self._pending.append({k: v.detach() if torch.is_tensor(v) else torch.tensor(float(v))
                              for k, v in scalars.items() if not k.startswith("_")})

    def summarize(self, step: int, *, flops: float = 0.0, tokens: int = 0, lrs: dict[str, float] | None = None,
                  extra: dict[str, float] | None = None) -> dict[str, float]:
        """Close the interval that ends at ``step``: its steps go to :attr:`history`, and the returned
        averages are ``train/<key>`` (finite values only) plus ``perf/step_s``,
        ``perf/data_wait_share``, ``perf/tokens_per_s`` (``tokens`` per step given),
        ``perf/mfu`` (``flops`` per step given and a known peak), ``lr/<name>`` of ``lrs``,
        ``perf/peak_mem_gib`` (CUDA) and ``extra``. One host sync. The next interval starts at
        :meth:`start_interval`."""
        from vividhead.training.trainers.flops import mfu

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        n = max(1, len(self._pending))
        elapsed = time.perf_counter() - self._t_interval
        buckets: dict[str, list[float]] = defaultdict(list)
        for values in self._take_pending(step):
            for k, v in values.items():
                if math.isfinite(v):
                    buckets[k].append(v)
        avg = {f"train/{k}": sum(v) / len(v) for k, v in buckets.items() if v}
        avg["perf/step_s"] = elapsed / n
        avg["perf/data_wait_share"] = self._t_data / max(elapsed, 1e-12)
        if tokens:
            avg["perf/tokens_per_s"] = tokens * n / elapsed
        if flops and self.peak_flops:
            avg["perf/mfu"] = mfu(flops, elapsed / n, peak=self.peak_flops)
        for name, lr in (lrs or {}).items():
            avg[f"lr/{name}"] = lr
        if self.device.type == "cuda":
            avg["perf/peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        avg.update(extra or {})
        return avg

    def finish(self, step: int) -> None:
        """Move the steps after the last log step (a SIGTERM stop) to :attr:`history`."""
        self._take_pending(step)

    def _take_pending(self, step: int) -> list[dict[str, float]]:
        n = len(self._pending)
        rows = [{k: float(v) for k, v in row.items()} for row in self._pending]
        self.history.extend({"step": step - n + 1 + i, **values} for i, values in enumerate(rows))
        self._pending.clear()
        return rows

    @staticmethod
    def postfix(avg: dict[str, float]) -> dict[str, str]:
        """The progress bar's postfix of an interval's averages (loss, MFU, tokens/s)."""
        post = {"loss": f"{avg.get('train/loss', float('nan')):.4f}"}
        if "perf/mfu" in avg:
            post["MFU"] = f"{100 * avg['perf/mfu']:.1f}%"
        if "perf/tokens_per_s" in avg:
            post["tok/s"] = f"{avg['perf/tokens_per_s']:.0f}"
        return post
