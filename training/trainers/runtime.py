"""What every trainer shares: process group, output folder, data stream with a resumable position,
optimisers with warm-up, EMA, checkpoints, SIGTERM, non-finite-loss stop, progress bar,
TensorBoard (and Weights & Biases when configured).

A trainer subclasses :class:`Trainer` and implements :meth:`Trainer.build` (networks, optimisers)
and :meth:`Trainer.train_step` (its objective: losses, then :meth:`Trainer.update` per optimiser);
:meth:`Trainer.run` does the rest, with the metrics in a
:class:`~vividhead.training.trainers.metrics.MetricsLogger`. A trainer mode is registered in
:mod:`vividhead.training.trainers.registry`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vividhead.config import to_dict
from vividhead.errors import UserError
from vividhead.training.trainers.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vividhead.training.trainers.config import DataConfig, OptimConfig
from vividhead.training.trainers.distributed import DistEnv, barrier, init_distributed
from vividhead.training.trainers.metrics import MetricsLogger

logger = logging.getLogger(__name__)


#: Files and folders whose presence means ``run.output_dir`` already holds a run.
RUN_MARKERS = ("config.json", "checkpoints", "metrics.jsonl")


def holds_run(out: Path) -> list[str]:
    """The :data:`RUN_MARKERS` present in ``out`` (an empty ``checkpoints/`` does not count)."""
    found = []
    for name in RUN_MARKERS:
        p = out / name
        if p.is_dir() and any(p.iterdir()) or p.is_file():
            found.append(name)
    return found


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and :func:`os.replace`."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


class TrainingDiverged(RuntimeError):
    """A non-finite loss: the run stops before the update; the message names the step and the last
    good checkpoint."""


class TrainingOutOfMemory(RuntimeError):
    """The device ran out of memory in a step: the run stops; the message names the step, the
    memory, the last checkpoint (a run resumes from it with ``--resume auto``) and the options that
    lower memory."""


# ----------------------------------------------------------------------------------------------
# Optimiser, schedule, EMA
# ----------------------------------------------------------------------------------------------
def make_optimizer(params: list[nn.Parameter], cfg: OptimConfig, lr: float | None = None,
                   device: torch.device | None = None) -> torch.optim.AdamW:
    """AdamW over ``params`` (fused on CUDA)."""
    fused = device is not None and device.type == "cuda"
    return torch.optim.AdamW(params, lr=lr or cfg.lr, betas=cfg.betas, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=fused or None)


def make_scheduler(opt: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then constant."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))


class EMA:
    """Exponential moving average of parameters, kept in the parameters' own (sharded) layout.

    Args:
        module: the trained module (FSDP2 DTensor parameters are shadowed shard by shard).
        decay: per-step decay.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone().float() for n, p in self.params.items()}
        # Listed once: the shadow tensors are loaded in place from a checkpoint, and the parameters
        # stay the module's own (FSDP2: sharded) Parameter objects for the whole run.
        self._shadow_list = list(self.shadow.values())
        self._param_list = list(self.params.values())
        self._cast = any(p.dtype != torch.float32 for p in self._param_list)

    @torch.no_grad()
    def update(self) -> None:
        """``shadow = decay * shadow + (1 - decay) * param`` as one ``torch._foreach_lerp_`` over
        every tensor (a multi-tensor kernel on CUDA, no per-parameter pass)."""
        params = [p.float() for p in self._param_list] if self._cast else self._param_list
        torch._foreach_lerp_(self._shadow_list, params, 1.0 - self.decay)


def make_clip_filter(fields: dict[str, Any]):
    """A :class:`~vividhead.training.data.ClipFilter` of config values (YAML lists become tuples)."""
    from vividhead.training.data import ClipFilter

    return ClipFilter(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


# ----------------------------------------------------------------------------------------------
# The run loop
# ----------------------------------------------------------------------------------------------
class Trainer:
    """Base of the stage-1 and stage-2 trainers.

    Args:
        cfg: the trainer's config dataclass (sections ``data``, ``optim``, ``parallel``,
            ``checkpoint``, ``log``, ``run`` at least).
        resume: checkpoint dir or run output dir to resume from; ``"auto"`` resumes from the
            run's own newest checkpoint when there is one. Without it, an ``output_dir`` that
            already holds a run (:func:`holds_run`) is refused before anything is written.

    Subclasses set in :meth:`build`: ``self.modules`` / ``self.optimizers`` (checkpointed by name),
    ``self.schedulers`` (by the optimiser's name), ``self.emas`` (by module name), and implement
    :meth:`train_step`.
    """

    #: Written into the checkpoint's meta.json and the export.
    kind = "base"
    #: Checkpoints hold only the parameters with ``requires_grad`` (LoRA: the adapters; the frozen
    #: base is rebuilt from the ``model`` section by :meth:`build`).
    checkpoint_trainable_only = False

    def __init__(self, cfg: Any, resume: str | None = None) -> None:
        self.cfg = cfg
        self.resume = resume
        self.env: DistEnv = init_distributed(cfg.run.device, cfg.parallel.backend, cfg.parallel.strategy)
        self.out = Path(cfg.run.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.step = 0
        self.epoch = 0
        self.next_index: dict[int, int] = {}
        self.skipped_samples: dict[str, int] = {}  # shard URL -> distinct samples skipped
        self._skipped_seen: set[tuple[str, str | None]] = set()
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}
        self.emas: dict[str, EMA] = {}
        self.last_checkpoint: Path | None = None
        self._stop_requested = False
        self.metrics = MetricsLogger(self.out, self.env.is_main, self.env.device)
        # Noise, sigmas, dropout and rollout draws: one generator per rank, checkpointed.
        self.generator = torch.Generator(device=self.env.device).manual_seed(cfg.run.seed * 1000 + self.env.rank)

    @property
    def history(self) -> list[dict[str, float]]:
        """Every step's logged scalars (``{"step", ...}``), on every rank."""
        return self.metrics.history

    # -- to implement ---------------------------------------------------------------------------
    def build(self) -> None:  # pragma: no cover - interface
        """Create the models, optimisers and data stream on ``self.env.device`` (called once, before
        resuming from a checkpoint, so the checkpoint loads into what this builds)."""
        raise NotImplementedError

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        """One optimiser step on ``batch``; returns scalar tensors to log (``loss`` first). Must not
        update weights when ``loss`` is not finite (:meth:`update` checks before stepping)."""
        raise NotImplementedError

    def update(self, name: str, loss: torch.Tensor) -> torch.Tensor:
        """Backward ``loss``, clip the gradients of ``self.modules[name]``'s trainable parameters to
        ``optim.grad_clip`` (0: no clip), then step optimiser ``name`` and its scheduler.

        Returns:
            the pre-clip global grad norm (detached).

        Raises:
            TrainingDiverged: a non-finite loss or grad norm on any rank (checked after backward,
                before the step, so the weights stay as they were; the step's one host sync).
        """
        loss.backward()
        params = [p for p in self.modules[name].parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip or float("inf"))
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
            norm = norm.full_tensor()
        self.check_finite(loss, norm)
        opt = self.optimizers[name]
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.schedulers[name].step()
        return norm.detach()

    def on_log(self, scalars: dict[str, float]) -> None:
        """Extra logging at log steps (validation, previews)."""

    # -- data -------------------------------------------------------------------------------------
    def make_dataset(self, data: DataConfig, clip_filter: dict | None = None, seed: int | None = None,
                     shuffle: bool = True, dataset_cls: type | None = None, **kwargs: Any):
        """The :class:`ClipWindowDataset` of ``data`` (uint8 frames, warn-and-continue on bad samples);
        ``dataset_cls`` picks a subclass (the stage-2 multi-chunk windows), ``kwargs`` go to it."""
        import webdataset as wds

        from vividhead.training.data import ClipWindowDataset

        return (dataset_cls or ClipWindowDataset).from_output_dir(
            data.shards,
            clip_filter=make_clip_filter({**data.clip_filter, **(clip_filter or {})}),
            num_frames=data.num_frames,
            num_motion_frames=data.motion_frames,
            cold_start_prob=data.cold_start_prob,
            shuffle_buffer=data.shuffle_buffer if shuffle else 0,
            shuffle_shards=shuffle,
            seed=self.cfg.run.seed if seed is None else seed,
            storage_options=data.storage_options or None,
            dtype=torch.uint8,
            # Quiet: every skipped sample and shard read error is counted and logged once by
            # note_skipped (data/skipped_samples) instead of webdataset's raw warnings.
            handler=wds.ignore_and_continue,
            **kwargs,
        )

    def held_out_keys(self) -> list[str]:
        """The first ``data.validation_clips`` clips (by key) that pass ``data.clip_filter`` and are
        longer than one window: held out of training for validation and previews."""
        data = self.cfg.data
        if not data.validation_clips:
            return []
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        manifest = Path(data.shards) / "manifest.parquet"
        if not manifest.exists():  # every sample is used (ClipWindowDataset.from_output_dir warns)
            return []
        flt = make_clip_filter(data.clip_filter)
        table = pq.read_table(str(manifest), columns=None)
        table = table.filter(flt.expression())
        table = table.filter(pc.field("num_frames") > data.num_frames)
        return sorted(table.column("key").to_pylist())[: data.validation_clips]

    def make_loader(self, dataset, data: DataConfig):
        """A DataLoader of :class:`ClipWindowBatch` (or :class:`CachedBatch` over a latent cache),
        pinned on CUDA."""
        from vividhead.training.data import collate_clip_windows
        from vividhead.training.trainers.latent_cache import LatentCacheDataset, collate_cached

        collate = collate_cached if isinstance(dataset, LatentCacheDataset) else collate_clip_windows
        return torch.utils.data.DataLoader(
            dataset, batch_size=data.batch_size, num_workers=data.num_workers,
            collate_fn=collate, pin_memory=self.env.device.type == "cuda",
            persistent_workers=False, prefetch_factor=4 if data.num_workers else None,
        )

    def batches(self, dataset, data: DataConfig) -> Iterator[Any]:
        """Endless stream of batches over epochs, starting at the recorded position; records the
        position of every batch handed out (per DataLoader worker) for the checkpoint."""
        while True:
            dataset.set_position(self.epoch, self.next_index)
            n = 0
            for batch in self.make_loader(dataset, data):
                for m in batch.meta:
                    w = int(m["stream_worker"])
                    self.next_index[w] = max(self.next_index.get(w, 0), int(m["stream_index"]) + 1)
                    self.note_skipped(m.get("skipped_new", ()))
                n += 1
                yield batch
            if n == 0:
                raise RuntimeError(f"no training windows in {data.shards} (check data.clip_filter and num_frames)")
            self.epoch += 1
            self.next_index = {}

    def note_skipped(self, skipped: Any) -> None:
        """Count and log (once each) the ``(shard_url, key, reason)`` the dataset skipped."""
        for url, key, reason in skipped:
            if (url, key) in self._skipped_seen:
                continue
            self._skipped_seen.add((url, key))
            self.skipped_samples[url] = self.skipped_samples.get(url, 0) + 1
            what = f"sample {key}" if key is not None else "the rest of the shard"
            logger.warning("skipped %s of %s: %s", what, url, reason)

    # -- checks -----------------------------------------------------------------------------------
    def check_finite(self, *values: torch.Tensor) -> None:
        """Raise :class:`TrainingDiverged` on every rank if any rank's loss (or grad norm, ...) is
        NaN/inf. One host sync; call it after backward and before the optimiser step."""
        bad = torch.stack([(~torch.isfinite(v.detach().float())).any() for v in values]).any().float().reshape(1)
        if self.env.mesh is not None:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item() > 0:
            last = latest_checkpoint(self.out)
            raise TrainingDiverged(
                f"non-finite loss at step {self.step + 1}; weights not updated; last good checkpoint: "
                f"{last if last is not None else 'none (no checkpoint written yet)'}"
            )

    def _out_of_memory(self) -> TrainingOutOfMemory:
        """The one-line report of an out-of-memory step (peak and capacity of this rank's device)."""
        dev = self.env.device
        where = str(dev)
        if dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated(dev) / 2**30
            total = torch.cuda.get_device_properties(dev).total_memory / 2**30
            where = f"{dev}: peak {peak:.1f} of {total:.1f} GiB"
        last = latest_checkpoint(self.out)
        return TrainingOutOfMemory(
            f"out of memory in step {self.step + 1} ({where}); the step's update may be incomplete, so resume "
            f"from the last checkpoint ({last if last is not None else 'none written yet'}) with --resume auto "
            f"after lowering memory: parallel.activation_checkpointing (now "
            f"{self.cfg.parallel.activation_checkpointing}; 'all' saves the most), data.batch_size (now "
            f"{self.cfg.data.batch_size}), or more GPUs (FSDP shards the weights and optimiser states)")

    def _sync_stop(self) -> bool:
        # One rank decides alone; several ranks agree at log steps (one collective there), so all
        # of them stop after the same step.
        if self.env.mesh is None or self.env.world_size == 1:
            return self._stop_requested
        if self.step % self.cfg.log.every_steps:
            return False
        flag = torch.tensor([1.0 if self._stop_requested else 0.0], device=self.env.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    # -- checkpoints ------------------------------------------------------------------------------
    def _tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {f"ema.{name}": ema.shadow for name, ema in self.emas.items()}

    def save(self) -> Path:
        """Write a checkpoint of the current step (all ranks)."""
        meta = {
            "kind": self.kind,
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "config": to_dict(self.cfg),
        }
        rank_state = {
            "rng": rng_state(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "next_index": dict(self.next_index),
            "skipped": dict(self.skipped_samples),
            "skipped_keys": sorted(([u, k] for u, k in self._skipped_seen), key=lambda x: (x[0], x[1] or "")),
        }
        self.last_checkpoint = save_checkpoint(
            self.ckpt_dir, self.step, self.env, self.modules, self.optimizers, self._tensors(), meta, rank_state,
            keep=self.cfg.checkpoint.keep, trainable_only=self.checkpoint_trainable_only,
        )
        return self.last_checkpoint

    def load(self, path: str | Path) -> None:
        """Restore every piece of state from a checkpoint."""
        meta, rank_state = load_checkpoint(path, self.env, self.modules, self.optimizers, self._tensors(),
                                           trainable_only=self.checkpoint_trainable_only)
        self.step = int(meta["step"])
        for name, sd in meta.get("schedulers", {}).items():
            self.schedulers[name].load_state_dict(sd)
        if rank_state:
            set_rng_state(rank_state["rng"])
            self.generator.set_state(rank_state["generator"])
            self.epoch = int(rank_state["epoch"])
            self.next_index = {int(k): int(v) for k, v in rank_state["next_index"].items()}
            self.skipped_samples = {str(k): int(v) for k, v in rank_state.get("skipped", {}).items()}
            self._skipped_seen = {(str(u), k) for u, k in rank_state.get("skipped_keys", [])}

    # -- logging ----------------------------------------------------------------------------------
    def log_scalars(self, scalars: dict[str, float]) -> None:
        """TensorBoard + ``metrics.jsonl`` at the current step (rank 0)."""
        self.metrics.write(self.step, scalars)

    def log_histogram(self, name: str, values: list[float]) -> None:
        """A TensorBoard histogram at the current step (rank 0)."""
        self.metrics.histogram(self.step, name, values)

    # -- the loop ---------------------------------------------------------------------------------
    def data_stream(self) -> Iterator[Any]:
        """Batches for :meth:`train_step` (the stage-1 trainer streams curated windows)."""
        raise NotImplementedError  # pragma: no cover - interface

    def train_flops_per_step(self) -> float:
        """Model FLOPs of one step on this rank (0 if not counted)."""
        return 0.0

    def tokens_per_step(self) -> int:
        """DiT video tokens processed per step on this rank (0 if not counted)."""
        return 0

    def run(self) -> dict[str, Any]:
        """Train until ``run.max_steps`` (or SIGTERM, which checkpoints and returns).

        Returns:
            ``{"step", "stopped" ("max_steps"/"sigterm"), "last_checkpoint", "history"}``.

        Raises:
            TrainingDiverged: a non-finite loss.
            TrainingOutOfMemory: the device ran out of memory in a step.
            CheckpointError: ``--resume`` without a usable checkpoint.
        """
        from tqdm import tqdm

        from vividhead.training.trainers.flops import peak_flops

        self.preflight()  # nothing is built or written before the run folder and the data are checked
        self.build()
        if self.resume is not None:
            target = self.out if self.resume == "auto" else self.resume
            if self.resume != "auto" or latest_checkpoint(target) is not None:
                self.load(target)
        if self.env.is_main:  # the run folder's first write
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "config.json", to_dict(self.cfg))
        cfg = self.cfg
        # peak None: MFU not shown (CPU, unknown GPU)
        self.metrics.open(peak_flops(self.env.device, cfg.parallel.precision), cfg.log.wandb_project, to_dict(cfg))
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        bar = tqdm(total=cfg.run.max_steps, initial=self.step, disable=not (self.env.is_main and cfg.log.progress),
                   desc=self.kind, unit="step", dynamic_ncols=True)
        stopped = "max_steps"
        stream = self.data_stream()
        self.metrics.start_interval()
        try:
            while self.step < cfg.run.max_steps:
                if self._sync_stop():
                    stopped = "sigterm"
                    break
                t0 = time.perf_counter()
                batch = next(stream)
                self.metrics.data_wait(time.perf_counter() - t0)
                try:
                    scalars = self.train_step(batch)
                except torch.OutOfMemoryError as exc:
                    raise self._out_of_memory() from exc
                self.step += 1
                for ema in self.emas.values():
                    ema.update()
                self.metrics.record(scalars)
                bar.update(1)
                if self.step % cfg.log.every_steps == 0 or self.step == cfg.run.max_steps:
                    avg = self.metrics.summarize(
                        self.step, flops=self.train_flops_per_step(), tokens=self.tokens_per_step(),
                        lrs={name: sch.get_last_lr()[0] for name, sch in self.schedulers.items()},
                        extra={"data/skipped_samples": float(sum(self.skipped_samples.values()))})
                    bar.set_postfix(self.metrics.postfix(avg), refresh=True)
                    self.log_scalars(avg)
                    self.on_log(avg)
                    self.metrics.start_interval()
                if self.step % cfg.checkpoint.every_steps == 0 and self.step < cfg.run.max_steps:
                    self.save()
            self.metrics.finish(self.step)  # steps after the last log step (SIGTERM)
            self.save()
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.metrics.close()
        return {"step": self.step, "stopped": stopped, "last_checkpoint": self.last_checkpoint,
                "history": self.history}

    def preflight(self) -> None:
        """Refuse a run folder that holds a run unless resuming, and check the data (every rank,
        then a barrier, so no rank's check sees another rank's first write).

        Raises:
            UserError: ``run.output_dir`` holds a run and no ``--resume`` was given; a ``--resume``
                path that does not exist; no shard, an unreadable manifest or a missing latent cache.
        """
        found = holds_run(self.out)
        if found and self.resume is None:
            raise UserError(f"run.output_dir {self.out} already holds a run ({', '.join(found)}); continue it with "
                            "--resume auto, or set a new run.output_dir")
        if self.resume not in (None, "auto") and not Path(self.resume).exists():
            raise UserError(f"--resume {self.resume}: no such checkpoint or run folder")
        self.check_data()
        barrier(self.env)

    def check_data(self) -> None:
        """The configured data exists: shards (and a readable manifest, or none) or a latent cache.

        Raises:
            UserError: one line naming the folder.
        """
        data = self.cfg.data
        if data.latent_cache:
            if not Path(data.latent_cache).is_dir():
                raise UserError(f"data.latent_cache: {data.latent_cache} is not a folder; write it with "
                                "`vividhead train cache-latents`")
            return
        from vividhead.training.data import check_training_data

        check_training_data(data.shards, data.storage_options or None)

    def _on_sigterm(self, signum, frame) -> None:
        logger.warning("SIGTERM: writing a checkpoint at the next step boundary")
        self._stop_requested = True


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
