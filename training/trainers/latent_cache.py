"""Latent cache: the frozen encoders' outputs for fixed windows of curated clips, written once as
WebDataset shards beside the dataset, so a trainer reads latents instead of decoding video and
running the VAE and Wav2Vec every step (``vividhead train cache-latents``).

Per window (``<key>_w<i>``), float16 ``.npy`` members:

* ``latents.npy``  ``[C, F', h, w]`` VAE latents of the window (the causal VAE makes the first 2
  the motion latents of its first 5 frames and the first 1 those of its first frame, so the 0.9 /
  0.1 motion schedule is still drawn at training time);
* ``ref.npy``      ``[C, F', h, w]`` reference latent;
* ``audio.npy``    ``[F + W//2, L, D]`` Wav2Vec features of the cache's last ``F + W//2`` frames
  (the windows are cut at load time: 5x smaller than the windows themselves);
* ``json``         clip key, window start, reference frame.

``index.json`` records the model geometry the cache was made for; a trainer with another
geometry refuses it. Windows are drawn as the training stream draws them (seeded), one per clip
per pass, ``windows_per_clip`` passes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from vividhead.flow_matching import audio_frame_windows
from vividhead.training.trainers.conditioning import ChunkInputs

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"


def _npy(a: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a.detach().cpu().to(torch.float16).numpy(), allow_pickle=False)
    return buf.getvalue()


def _geometry(cfg) -> dict[str, Any]:
    from vividhead.training.trainers.models import resolve_variant

    v = resolve_variant(cfg.model)
    return {"variant": v.name, "vae": v.vae.value, "height_px": v.streaming.height_px,
            "width_px": v.streaming.width_px, "num_frames": cfg.data.num_frames,
            "audio_window": v.transformer.audio_window, "vae_path": cfg.model.vae_path,
            "wav2vec_path": cfg.model.wav2vec_path, "seed": cfg.model.seed}


@torch.no_grad()
def write_latent_cache(cfg, out: str | Path, windows_per_clip: int = 4, samples_per_shard: int = 64,
                       device: str | None = None) -> int:
    """Encode ``windows_per_clip`` windows of every selected clip of ``cfg.data.shards``.

    Args:
        cfg: an :class:`SFTConfig` (its ``model`` and ``data`` sections; ``parallel.fast_vae`` /
            ``vae_compile``: the VAE as the trainer runs it).
        out: cache folder (shards written atomically: ``.tmp`` then rename).
        windows_per_clip: passes over the clips, one seeded window per clip each.
        samples_per_shard: windows per cache shard.
        device: encode on (default: CUDA if available).

    Returns:
        windows written.

    Raises:
        vividhead.training.data.DataError: no shard or an unreadable manifest (checked before any
            model loads or anything is written).
    """
    import webdataset as wds
    from tqdm import tqdm

    from vividhead.training.data import ClipFilter, ClipWindowDataset, check_training_data, collate_clip_windows
    from vividhead.training.trainers.conditioning import encode_batch
    from vividhead.training.trainers.models import build_encoders, resolve_variant

    check_training_data(cfg.data.shards, cfg.data.storage_options or None)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    variant = resolve_variant(cfg.model)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    enc = build_encoders(cfg.model, variant, dev, dtype, cfg.parallel)
    flt = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.data.clip_filter.items()}
    ds = ClipWindowDataset.from_output_dir(
        cfg.data.shards, clip_filter=ClipFilter(**flt), num_frames=cfg.data.num_frames,
        num_motion_frames=cfg.data.motion_frames, cold_start_prob=0.0, shuffle_buffer=0, shuffle_shards=False,
        seed=cfg.run.seed, storage_options=cfg.data.storage_options or None, dtype=torch.uint8,
        rank=0, world_size=1, handler=wds.ignore_and_continue,  # skipped samples: logged once each below
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    half = variant.transformer.audio_window // 2
    size = (variant.streaming.height_px, variant.streaming.width_px)
    n, shard, buf = 0, 0, []

    def flush() -> None:
        nonlocal shard, buf
        if not buf:
            return
        final = out / f"{shard:05d}.tar"
        tmp = out / f"{shard:05d}.tar.tmp"
        with wds.TarWriter(str(tmp)) as tw:
            for s in buf:
                tw.write(s)
        os.replace(tmp, final)
        shard += 1
        buf = []

    from vividhead.shard_format import SAMPLES_PER_FRAME

    total = windows_per_clip * ds.num_clips if ds.num_clips is not None else None
    bar = tqdm(total=total, desc="cache-latents", unit="window", dynamic_ncols=True)
    for p in range(windows_per_clip):
        ds.set_position(p)
        for window in ds:
            for url, key, reason in window.meta.get("skipped_new", ()):
                logger.warning("skipped %s of %s: %s", f"sample {key}" if key else "the rest of the shard", url, reason)
            bar.update(1)
            batch = collate_clip_windows([window])
            inp = encode_batch(batch, enc, variant.transformer.audio_window, dev, size=size)
            feats = enc.audio(batch.audio.to(dev), batch.audio.shape[1] // SAMPLES_PER_FRAME)[0]
            tail = feats[-(cfg.data.num_frames + half):]
            meta = {k: window.meta.get(k) for k in ("key", "window_start_frame", "reference_frame")}
            buf.append({"__key__": f"{meta['key']}_w{p}", "latents.npy": _npy(inp.latents[0]),
                        "ref.npy": _npy(inp.ref_latent[0]), "audio.npy": _npy(tail),
                        "json": json.dumps(meta).encode()})
            n += 1
            if len(buf) >= samples_per_shard:
                flush()
    flush()
    bar.close()
    tmp = out / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps({"windows": n, "shards": shard, "geometry": _geometry(cfg)}, indent=2))
    os.replace(tmp, out / INDEX_FILE)
    return n


def check_cache_geometry(cache: str | Path, cfg) -> None:
    """Refuse a cache made for another model geometry or other frozen weights.

    Raises:
        ValueError: naming the differing fields.
        FileNotFoundError: no ``index.json``.
    """
    idx = json.loads((Path(cache) / INDEX_FILE).read_text())
    want = _geometry(cfg)
    diff = {k: (idx["geometry"].get(k), v) for k, v in want.items() if idx["geometry"].get(k) != v}
    if diff:
        raise ValueError(f"latent cache {cache} was made for another setup: {diff} (cache, config)")


@dataclass
class CachedBatch:
    """A batch read from the latent cache: the encoder outputs and the per-sample stream position."""

    inputs: ChunkInputs
    meta: list[dict[str, Any]]


class LatentCacheDataset(IterableDataset):
    """Stream :class:`ChunkInputs` samples from a latent cache (split by rank and worker,
    shuffled per epoch, resumable with :meth:`set_position` like :class:`ClipWindowDataset`).

    Args:
        cache: the cache folder.
        audio_window: Wav2Vec frames per video frame (5).
        num_frames: video frames per window (33).
        motion_latents: motion latent slots of a normal sample (2).
        cold_start_prob: probability of 1 motion slot.
        seed, rank, world_size: determinism and the DDP split (default: torch.distributed).
    """

    def __init__(self, cache: str | Path, audio_window: int, num_frames: int, motion_latents: int = 2,
                 cold_start_prob: float = 0.1, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None) -> None:
        super().__init__()
        self.urls = sorted(str(p) for p in Path(cache).glob("*.tar"))
        if not self.urls:
            raise FileNotFoundError(f"no cache shards in {cache}")
        self.audio_window, self.num_frames = audio_window, num_frames
        self.motion_latents, self.cold_start_prob = motion_latents, cold_start_prob
        self.seed = seed
        if rank is None:
            import torch.distributed as dist

            rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.next_index: dict[int, int] = {}

    def set_position(self, epoch: int, next_index: dict[int, int] | None = None) -> None:
        """See :meth:`ClipWindowDataset.set_position`."""
        self.epoch = int(epoch)
        self.next_index = dict(next_index or {})

    def _samples(self, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        urls = list(self.urls)
        random.Random(self.seed * 7919 + self.epoch).shuffle(urls)
        mine = urls[self.rank * workers + worker :: self.world_size * workers]
        yield from wds.DataPipeline(wds.SimpleShardList(mine), wds.tarfile_to_samples())

    def __iter__(self) -> Iterator[tuple[ChunkInputs, dict[str, Any]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        skip = self.next_index.get(worker, 0)
        half = self.audio_window // 2
        for index, s in enumerate(self._samples(worker, workers)):
            if index < skip:
                continue
            rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{worker}-{index}")
            lat = torch.from_numpy(np.load(io.BytesIO(s["latents.npy"]))).float()
            ref = torch.from_numpy(np.load(io.BytesIO(s["ref.npy"]))).float()
            feats = torch.from_numpy(np.load(io.BytesIO(s["audio.npy"]))).float()[None]
            ctx = audio_frame_windows(feats, half, half + self.num_frames, self.audio_window)[0]
            m = 1 if rng.random() < self.cold_start_prob else self.motion_latents
            meta = json.loads(s["json"])
            meta.update(stream_index=index, stream_worker=worker, epoch=self.epoch)
            yield ChunkInputs(lat[None], ref[None], ctx[None], torch.tensor([m])), meta


def collate_cached(samples: list[tuple[ChunkInputs, dict[str, Any]]]) -> CachedBatch:
    """Stack cache samples into a :class:`CachedBatch`."""
    inputs = ChunkInputs(*(torch.cat([getattr(s[0], f) for s in samples]) for f in
                           ("latents", "ref_latent", "context", "num_motion")))
    return CachedBatch(inputs, [s[1] for s in samples])
