"""Shared test fixtures: paths into ../shared/fixtures, weights folder, one local Ray per session, and
one real curation output (``curated_shards``) for the loader, card, publisher and trainer tests.
Helper modules beside this file (``tiny_models.py``, ``gloo_ranks.py``) import by name."""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
# Test helpers (``tiny_models``, ``gloo_ranks``) import by name from every test folder.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
FIXTURES = (REPO / ".." / "shared" / "fixtures").resolve()
VIDEO_DIR = FIXTURES / "media" / "video"
AUDIO_DIR = FIXTURES / "media" / "audio"
IMAGE_DIR = FIXTURES / "media" / "image"
WEIGHTS_DIR = FIXTURES / "weights"

# Set before Ray starts so its workers inherit it.
os.environ.setdefault("VIVIDHEAD_WEIGHTS_DIR", str(WEIGHTS_DIR))
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# No test may reach the internet: weights and Hub models resolve from local paths only.
os.environ.setdefault("VIVIDHEAD_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

if not VIDEO_DIR.is_dir():  # pragma: no cover - CI always has ../shared
    pytest.exit(f"test fixtures not found at {FIXTURES} (clone with ../shared beside the repo)", returncode=2)


@pytest.fixture
def cli_with_commands(monkeypatch) -> Callable[..., None]:
    """``add(name=function, ...)``: ``vividhead.cli.main`` then builds the real app plus these
    commands (each a function without parameters), for tests of how the entry point ends them."""
    import vividhead.cli as cli

    def add(**commands: Callable[[], None]) -> None:
        real_build = cli.build_app

        def build():
            app = real_build()
            for name, fn in commands.items():
                app.command(name.replace("_", "-"))(fn)
            return app

        monkeypatch.setattr(cli, "build_app", build)

    return add


@pytest.fixture(scope="session")
def video_dir() -> Path:
    return VIDEO_DIR


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    return AUDIO_DIR


@pytest.fixture(scope="session")
def image_dir() -> Path:
    return IMAGE_DIR


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return WEIGHTS_DIR


@pytest.fixture(scope="session")
def ray_local():
    """One in-process local Ray for the whole session (2 CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


# ------------------------------------------------------------------------------------------------
# A real curation output
# ------------------------------------------------------------------------------------------------

#: Inputs of ``curated_shards``: (fixture video, source id, start_s, end_s), cut exactly there. With
#: ``scene_split.max_clip_s`` 3.3 s the 3.4 s span of face2 becomes two clips; the last five inputs
#: are rejected on the way (the funnel then has drops at five stages).
CURATED_INPUTS: tuple[tuple[str, str, float, float], ...] = (
    ("talk_retalking_face2.mp4", "talk_retalking_face2", 0.0, 3.4),
    ("talk_retalking_face3.mp4", "talk_retalking_face3", 0.0, 1.8),
    ("talk_retalking_face5.mp4", "talk_retalking_face5", 0.0, 1.8),
    ("talk_hdtf_aoc_512.mp4", "talk_hdtf_aoc_512", 0.0, 3.24),
    ("talk_retalking_face3.mp4", "face3_copy", 0.0, 1.8),  # dedup: duplicate_md5
    ("neg_no_audio_talking_vertical.mp4", "no_audio", 0.0, 2.0),  # probe: no_audio
    ("talk_retalking_face4.mp4", "face4_short", 0.0, 0.6),  # scene_split: too_short
    ("neg_silent_audio_expressions.mp4", "silent", 0.0, 1.0),  # normalize: silent_audio
    ("neg_slides_multiface.mp4", "slides", 0.0, 1.0),  # face: no_face (a slide first)
)
#: Kept clips of ``curated_shards``: {sample key: frames}.
CURATED_KEPT: dict[str, int] = {
    "talk_retalking_face2-0000": 41,
    "talk_retalking_face2-0001": 41,
    "talk_retalking_face3-0000": 45,
    "talk_retalking_face5-0000": 45,
    "talk_hdtf_aoc_512-0000": 81,
}
#: Rejections of ``curated_shards``: {source id: (stage, reason)}.
CURATED_REJECTED: dict[str, tuple[str, str]] = {
    "face3_copy": ("dedup", "duplicate_md5"),
    "no_audio": ("probe", "no_audio"),
    "face4_short": ("scene_split", "too_short"),
    "silent": ("normalize", "silent_audio"),
    "slides": ("face", "no_face"),
}


def _tiny_wav2vec(path: Path) -> Path:
    """A tiny random transformers Wav2Vec2 folder (2 layers x 16 features) for the audio_features stage."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from vividhead.models.audio_encoder import TINY_WAV2VEC_KWARGS

    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC_KWARGS)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def curated_shards(tmp_path_factory, ray_local) -> Path:
    """OUT of one real ``run_curation`` over :data:`CURATED_INPUTS` (once per session; read-only).

    The offline test config (every optional stage off, ``tests/curation/fast_config.py``) plus the
    ``face`` stage (512x512 crop, MediaPipe detector from the fixtures), ``face_mask``
    (``<key>.mask.npz``) and ``audio_features`` with a tiny random Wav2Vec2
    (``<key>.wav2vec.npy``, float16 [N, 2, 16]); two kept clips per shard. OUT holds ``shards/``,
    ``_parts/``, ``manifest.parquet`` and ``stats.json`` as :mod:`vividhead.shard_format` describes.
    Kept clips: :data:`CURATED_KEPT` (41 to 81 frames, 2 or 3 shards depending on the order inputs
    finish); rejections: :data:`CURATED_REJECTED`. Scores of stages that cannot run offline
    (SyncNet, attributes, ...) are null; :func:`copy_curated` writes chosen values into a copy.
    """
    helpers = str(Path(__file__).parent / "curation")  # fast_config.py, as the curation tests import it
    if helpers not in sys.path:
        sys.path.insert(0, helpers)
    from fast_config import fast_config

    from vividhead.curation.pipeline import run_curation
    from vividhead.shard_format import KEPT, REJECTED

    tmp = tmp_path_factory.mktemp("curated")
    inputs = tmp / "inputs.csv"
    with inputs.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["url", "source_id", "start_s", "end_s"])
        for video, source_id, start_s, end_s in CURATED_INPUTS:
            writer.writerow([str(VIDEO_DIR / video), source_id, start_s, end_s])
    cfg = fast_config(
        scene_split={"detector": "none", "min_clip_s": 1.0, "max_clip_s": 3.3},
        face={"enabled": True},
        face_mask={"enabled": True},
        audio_features={"enabled": True, "weights_path": str(_tiny_wav2vec(tmp / "wav2vec"))},
        write={"samples_per_shard": 2},
    )
    out = tmp / "out"
    result = run_curation([str(inputs)], str(out), cfg)
    rows = result.manifest.to_pylist()
    kept = {r["key"]: r["num_frames"] for r in rows if r["status"] == KEPT and r["key"] is not None}
    rejected = {r["source_id"]: (r["stage"], r["reason"]) for r in rows if r["status"] == REJECTED}
    assert (kept, rejected) == (CURATED_KEPT, CURATED_REJECTED), f"curation changed: {kept}, {rejected}"
    return out


@pytest.fixture(scope="session")
def copy_curated(curated_shards, tmp_path_factory) -> Callable[..., Path]:
    """Factory of writable copies of ``curated_shards``: ``copy_curated(manifest_values=None) -> OUT``.

    ``manifest_values`` ({sample key: {column: value}}) sets manifest columns of kept clips, e.g.
    the SyncNet and language columns the offline pipeline leaves null; the table keeps the
    contract's schema. Only ``manifest.parquet`` changes (the shards and ``<key>.json`` stay as written).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vividhead.shard_format import MANIFEST_FILE, MANIFEST_SCHEMA

    def make(manifest_values: Optional[dict[str, dict[str, Any]]] = None) -> Path:
        out = tmp_path_factory.mktemp("curated_copy") / "out"
        shutil.copytree(curated_shards, out)
        if manifest_values:
            rows = pq.read_table(out / MANIFEST_FILE).to_pylist()
            unknown = set(manifest_values) - {r["key"] for r in rows}
            assert not unknown, f"no kept clip {sorted(unknown)}"
            for r in rows:
                r.update(manifest_values.get(r["key"]) or {})
            pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), out / MANIFEST_FILE)
        return out

    return make
