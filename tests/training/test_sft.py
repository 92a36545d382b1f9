"""Stage-1 trainer on real clips curated by our own pipeline (``curated_shards``), tiny DiT on CPU."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from tiny_models import TINY_DIT
from typer.testing import CliRunner

from vividhead.config import ConfigError
from vividhead.flow_matching import FlowMatchingSchedule, flow_matching_loss, motion_latent_count
from vividhead.training.trainers.config import SFTConfig, config_from_dict, load_train_config
from vividhead.training.trainers.runtime import TrainingDiverged
from vividhead.training.trainers.sft import SFTTrainer

REPO = Path(__file__).resolve().parents[2]


def tiny_config(shards: Path, out: Path, **sections) -> SFTConfig:
    """The shipped tiny CPU config pointed at ``shards``/``out``, with section overrides."""
    raw = yaml.safe_load((REPO / "examples" / "sft_tiny_cpu.yaml").read_text())
    raw["data"].update(shards=str(shards), num_workers=0, validation_clips=0)
    raw["log"].update(progress=False, validate_every_steps=0, preview_every_steps=0)
    raw["run"].update(output_dir=str(out))
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw, SFTConfig)


def weights(trainer: SFTTrainer) -> dict[str, torch.Tensor]:
    from vividhead.training.trainers.checkpoint import full_state_dict

    return {k: v.clone() for k, v in full_state_dict(trainer.transformer).items()}


def run(cfg: SFTConfig, resume: str | None = None) -> SFTTrainer:
    from vividhead.training.trainers.distributed import shutdown_distributed

    trainer = SFTTrainer(cfg, resume=resume)
    try:
        trainer.result = trainer.run()
        trainer.final = weights(trainer)
    finally:
        shutdown_distributed()
    return trainer


# -- config -----------------------------------------------------------------------------------------
def test_shipped_configs_load():
    for name in ("sft_tiny_cpu", "sft_pro", "sft_lite", "sft_14b"):
        cfg = load_train_config(REPO / "examples" / f"{name}.yaml", SFTConfig)
        assert cfg.run.max_steps >= 1


@pytest.mark.parametrize("text, message", [
    ("optim: {lrr: 1.0}", r"^optim\.lrr: unknown key"),
    ("optim: {lr: fast}", r"^optim\.lr: expected a number"),
    ("flow: {timestep_sampling: cosine}", r"^flow\.timestep_sampling: must be one of"),
    ("model: {init: wan_t2v}", r"^model\.init_path: required"),
])
def test_unknown_key_and_bad_value_name_the_key(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_train_config(p, SFTConfig)


# -- the recipe ---------------------------------------------------------------------------------------
def test_motion_slots_take_no_loss_and_no_gradient():
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 9, 4, 4)
    noise = torch.randn_like(x0)
    num_motion = torch.tensor([2, 1])
    out_param = torch.zeros_like(x0, requires_grad=True)

    def velocity(x_t, t):
        return out_param + 0 * x_t

    res = flow_matching_loss(velocity, x0, num_motion, torch.tensor([0.5, 0.9]), noise)
    res.loss.backward()
    g = out_param.grad
    assert torch.all(g[0, :, :2] == 0) and torch.all(g[1, :, :1] == 0)
    assert torch.all(g[0, :, 2:] != 0) and torch.all(g[1, :, 1:] != 0)

    # The DiT sees the clean latents in the motion slots, noised latents elsewhere.
    seen = {}

    def spy(x_t, t):
        seen["x"] = x_t
        return torch.zeros_like(x_t)

    flow_matching_loss(spy, x0, num_motion, torch.tensor([0.5, 0.9]), noise)
    assert torch.equal(seen["x"][0, :, :2], x0[0, :, :2]) and torch.equal(seen["x"][1, :, :1], x0[1, :, :1])
    assert not torch.allclose(seen["x"][0, :, 2:], x0[0, :, 2:])


def test_motion_schedule_is_point_nine_five_frames_point_one_cold_start():
    import random

    from vividhead.training.data import plan_window

    rng = random.Random(0)
    counts = [plan_window(81, rng, 33, 5, 0.1).num_motion_frames for _ in range(4000)]
    assert set(counts) == {1, 5}
    cold = counts.count(1) / len(counts)
    assert 0.085 < cold < 0.115, cold
    assert motion_latent_count(5, 4) == 2 and motion_latent_count(9, 8) == 2 and motion_latent_count(1, 4) == 1


def test_training_and_inference_share_the_schedule():
    sig = FlowMatchingSchedule().sigmas()
    assert [round(s, 4) for s in sig] == [1.0, 0.9375, 0.8333, 0.625, 0.0]
    from vividhead.models.configs import get_variant

    assert get_variant("pro").streaming.schedule == FlowMatchingSchedule()


# -- training on curated clips ---------------------------------------------------------------------
def test_tiny_model_overfits_curated_clips_from_a_latent_cache(curated_shards, tmp_path):
    """cache-latents on real curated clips, then 60 steps on 3 windows: the loss falls below half."""
    from vividhead.training.trainers.latent_cache import write_latent_cache

    cfg = tiny_config(curated_shards, tmp_path / "run", optim={"lr": 3e-3, "warmup_steps": 1, "ema_decay": 0.0},
                      flow={"audio_dropout": 0.0, "reference_dropout": 0.0}, run={"max_steps": 60},
                      checkpoint={"every_steps": 1000}, data={"clip_filter": {"keys": [
                          "talk_retalking_face2-0000", "talk_retalking_face3-0000", "talk_hdtf_aoc_512-0000"]}})
    n = write_latent_cache(cfg, tmp_path / "cache", windows_per_clip=1, samples_per_shard=2)
    assert n == 3
    cfg = tiny_config(curated_shards, tmp_path / "run", **{
        "optim": {"lr": 3e-3, "warmup_steps": 1, "ema_decay": 0.0},
        "flow": {"audio_dropout": 0.0, "reference_dropout": 0.0},
        "run": {"max_steps": 60}, "checkpoint": {"every_steps": 1000},
        "data": {"latent_cache": str(tmp_path / "cache"), "batch_size": 3, "cold_start_prob": 0.0,
                 "clip_filter": {"keys": ["talk_retalking_face2-0000", "talk_retalking_face3-0000",
                                          "talk_hdtf_aoc_512-0000"]}},
    })
    trainer = run(cfg)
    losses = [h["loss"] for h in trainer.result["history"]]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)


def test_resume_is_exact(curated_shards, tmp_path):
    """4 steps straight == 2 steps, a fresh process state, --resume, 2 more: weights bit for bit
    (on-the-fly decoding, so the data position and every RNG stream are restored)."""
    common = {"optim": {"ema_decay": 0.9, "warmup_steps": 2}, "checkpoint": {"every_steps": 2}}
    straight = run(tiny_config(curated_shards, tmp_path / "a", run={"max_steps": 4}, **common))
    run(tiny_config(curated_shards, tmp_path / "b", run={"max_steps": 2}, **common))
    resumed = run(tiny_config(curated_shards, tmp_path / "b", run={"max_steps": 4}, **common), resume="auto")
    assert resumed.result["step"] == 4
    for k, v in straight.final.items():
        assert torch.equal(v, resumed.final[k]), k
    losses_a = [h["loss"] for h in straight.result["history"]]
    losses_b = [h["loss"] for h in resumed.result["history"]]
    assert losses_a[2:] == losses_b


def test_nan_loss_stops_with_step_and_last_checkpoint(curated_shards, tmp_path, monkeypatch):
    cfg = tiny_config(curated_shards, tmp_path / "run", run={"max_steps": 5}, checkpoint={"every_steps": 2})
    real = SFTTrainer.loss

    def poisoned(self, inputs):
        out = real(self, inputs)
        if self.step == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SFTTrainer, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 4.*step_00000002"):
        run(cfg)


def test_sigterm_writes_a_checkpoint_and_stops(curated_shards, tmp_path, monkeypatch):
    import signal

    cfg = tiny_config(curated_shards, tmp_path / "run", run={"max_steps": 50}, checkpoint={"every_steps": 1000})
    real = SFTTrainer.train_step

    def step_then_term(self, batch):
        out = real(self, batch)
        if self.step == 1:  # during the second step
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(SFTTrainer, "train_step", step_then_term)
    trainer = run(cfg)
    assert trainer.result["stopped"] == "sigterm" and trainer.result["step"] == 2
    assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "meta.json").exists()


def test_corrupt_sample_is_skipped_and_counted(copy_curated, tmp_path):
    out = copy_curated()
    shard = sorted((out / "shards").glob("*.tar"))[0]
    tmp = shard.with_suffix(".tmp")
    with tarfile.open(shard) as src, tarfile.open(tmp, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.endswith(".mp4"):
                data = b"\x00not a video" * 100
                m.size = len(data)
            import io

            dst.addfile(m, io.BytesIO(data))
    os.replace(tmp, shard)
    cfg = tiny_config(out, tmp_path / "run", run={"max_steps": 3}, log={"every_steps": 3})
    trainer = run(cfg)
    assert trainer.result["step"] == 3
    assert sum(trainer.skipped_samples.values()) >= 1
    import json

    last = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["data/skipped_samples"] >= 1


# -- FSDP over 2 gloo ranks == one process ---------------------------------------------------------
def _fsdp_worker(rank: int, world: int, init_file: str, result_file: str, steps: int) -> None:
    import torch.distributed as dist

    from vividhead.models.flashhead import FlashHeadTransformer
    from vividhead.training.trainers.config import OptimConfig, ParallelConfig
    from vividhead.training.trainers.distributed import DistEnv, wrap_model
    from vividhead.training.trainers.runtime import make_optimizer

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        from torch.distributed.device_mesh import init_device_mesh

        env = DistEnv(rank, world, rank, torch.device("cpu"), init_device_mesh("cpu", (world,)))
    else:
        env = DistEnv(0, 1, 0, torch.device("cpu"), None)
    torch.manual_seed(0)
    model = FlashHeadTransformer.from_config_dataclass(TINY_DIT)
    pcfg = ParallelConfig(strategy="fsdp" if world > 1 else "none", precision="fp32")
    dit = wrap_model(model, model.blocks, pcfg, env)
    opt = make_optimizer(list(model.parameters()), OptimConfig(lr=1e-3))
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 3, 8, 8, generator=g)
    ref = torch.randn(2, 4, 3, 8, 8, generator=g)
    ctx = torch.randn(2, 9, 5, 2, 16, generator=g)
    sigma = torch.tensor([0.3, 0.8])
    noise = torch.randn(2, 4, 3, 8, 8, generator=g)
    sl = slice(rank, rank + 1) if world > 1 else slice(0, 2)
    for _ in range(steps):
        res = flow_matching_loss(lambda x, t: dit(x, t, ctx[sl], ref[sl]), x0[sl], torch.tensor([2, 1])[sl],
                                 sigma[sl], noise[sl])
        res.loss.backward()
        opt.step()
        opt.zero_grad()
    from vividhead.training.trainers.checkpoint import full_state_dict

    sd = full_state_dict(model) if world > 1 else {k: v.detach().clone() for k, v in model.state_dict().items()}
    if rank == 0:
        torch.save(sd, result_file)
    if world > 1:
        from gloo_ranks import finish_rank

        finish_rank()


def test_two_gloo_ranks_with_fsdp_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    _fsdp_worker(0, 1, "", str(tmp_path / "one.pt"), steps=3)
    mp.spawn(_fsdp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "two.pt"), 3), nprocs=2, join=True)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst < 1e-5, worst  # FSDP averages the two ranks' gradients = the mean loss over both


# -- the one-package path ----------------------------------------------------------------------------
def assert_preview_has_window_audio(path: Path) -> None:
    """The preview MP4 carries its window's audio: as long as its frames, and not silence."""
    import av
    import numpy as np

    from vividhead.media import count_video_frames

    with av.open(str(path)) as container:
        rate = container.streams.audio[0].rate
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert abs(len(pcm) / rate - count_video_frames(path) / 25) < 0.1, (len(pcm), rate, count_video_frames(path))
    assert np.abs(pcm).max() > 0.01


def test_curate_train_export_infer(curated_shards, tmp_path, image_dir, audio_dir):
    """What a new user runs: (curated shards) -> train the tiny config -> export -> vividhead infer."""
    from vividhead.cli import build_app

    cfg_path = tmp_path / "tiny.yaml"
    raw = yaml.safe_load((REPO / "examples" / "sft_tiny_cpu.yaml").read_text())
    raw["data"].update(shards=str(curated_shards), num_workers=0)
    raw["log"].update(progress=False, validate_every_steps=3, preview_every_steps=3)
    raw["run"].update(output_dir=str(tmp_path / "run"), max_steps=3)
    cfg_path.write_text(yaml.safe_dump(raw))
    app = build_app()
    runner = CliRunner()
    res = runner.invoke(app, ["train", "sft", "--config", str(cfg_path)])
    assert res.exit_code == 0, res.output
    preview = tmp_path / "run" / "previews" / "step_00000003.mp4"
    assert preview.stat().st_size > 0
    assert_preview_has_window_audio(preview)
    assert any('"val/loss"' in line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    res = runner.invoke(app, ["train", "export", str(tmp_path / "run"), "--out", str(tmp_path / "export")])
    assert res.exit_code == 0, res.output
    speech = tmp_path / "speech.wav"
    import soundfile as sf

    data, sr = sf.read(str(audio_dir / "speech_jfk_16k.wav"), dtype="float32")
    sf.write(str(speech), data[: sr * 2], sr)
    res = runner.invoke(app, ["infer", "--checkpoint", str(tmp_path / "export"), "--image",
                              str(image_dir / "face_frontal_happy_256.png"), "--audio", str(speech),
                              "--out", str(tmp_path / "out.mp4"), "--device", "cpu", "--dtype", "fp32"])
    assert res.exit_code == 0, res.output
    from vividhead.media import count_video_frames

    assert count_video_frames(tmp_path / "out.mp4") == 50  # 2 s at 25 fps


def test_export_loads_strictly_and_matches_the_ema(curated_shards, tmp_path):
    from vividhead.inference.pipeline import FlashHeadModels
    from vividhead.training.trainers.export import export_checkpoint

    trainer = run(tiny_config(curated_shards, tmp_path / "run", run={"max_steps": 2},
                              optim={"ema_decay": 0.5}))
    path = export_checkpoint(tmp_path / "run", tmp_path / "export")
    models = FlashHeadModels.from_export(path, device="cpu", dtype=torch.float32)
    exported = models.transformer.state_dict()
    ema = trainer.emas["transformer"].shadow
    for k, v in ema.items():
        full = v.full_tensor() if hasattr(v, "full_tensor") else v
        assert torch.equal(exported[k], full), k
    shutil.rmtree(tmp_path / "run")
