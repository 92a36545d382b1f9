"""Stage-2 trainer (DMD distillation, K-chunk rollout, stochastic truncation) on real clips curated by
our own pipeline (``curated_shards``), tiny DiT on CPU.

Kept clips of ``curated_shards`` hold one 33-frame chunk (41 and 45 frames) or two (the 81-frame
``talk_hdtf_aoc_512-0000``), so tests that need a two-chunk rollout select that clip. The teacher
is a tiny stage-1 model trained for 100 steps on cached latents of the same clips and exported
(``teacher``, ~10 s).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from vividhead.config import ConfigError
from vividhead.flow_matching import add_noise, motion_loss_mask, overwrite_motion
from vividhead.training.trainers.config import SFTConfig, config_from_dict, load_train_config
from vividhead.training.trainers.distill import DistillTrainer, distribution_matching_loss, window_chunks
from vividhead.training.trainers.distill_config import DistillConfig

REPO = Path(__file__).resolve().parents[2]
TWO_CHUNK_CLIP = "talk_hdtf_aoc_512-0000"


def distill_config(shards: Path, out: Path, teacher: Path | None = None, **sections) -> DistillConfig:
    """The shipped tiny CPU config on ``shards``/``out``, from ``teacher`` (an export or a stage-1 run)
    or, without one, from a random tiny DiT at 32x32, with section overrides."""
    raw = yaml.safe_load((REPO / "examples" / "distill_tiny_cpu.yaml").read_text())
    raw["data"].update(shards=str(shards), num_workers=0, validation_clips=0)
    raw["log"].update(progress=False, validate_every_steps=0, preview_every_steps=0)
    raw["run"].update(output_dir=str(out))
    raw["checkpoint"]["every_steps"] = 1000
    raw["distill"]["init_checkpoint"] = str(teacher) if teacher else None
    if teacher is None:
        raw["model"] = {**yaml.safe_load((REPO / "examples" / "sft_tiny_cpu.yaml").read_text())["model"],
                        "height_px": 32, "width_px": 32}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw, DistillConfig)


def full_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    from vividhead.training.trainers.checkpoint import full_state_dict

    return {k: v.clone() for k, v in full_state_dict(module).items()}


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def run(cfg: DistillConfig, resume: str | None = None, cls: type = DistillTrainer) -> DistillTrainer:
    from vividhead.training.trainers.distributed import shutdown_distributed

    trainer = cls(cfg, resume=resume)
    try:
        trainer.result = trainer.run()
        trainer.final = {role: full_weights(trainer.raw[role]) for role in ("generator", "fake_score")}
    finally:
        shutdown_distributed()
    return trainer


def built(cfg: DistillConfig) -> DistillTrainer:
    """A built trainer (networks, encoders, data) without running it; the caller shuts it down."""
    trainer = DistillTrainer(cfg)
    trainer.build()
    return trainer


def first_window(trainer: DistillTrainer):
    return trainer.prepare_window(next(trainer.data_stream()))


@dataclasses.dataclass
class Teacher:
    run: Path  # the stage-1 run folder (DCP checkpoint)
    export: Path  # its export


@pytest.fixture(scope="module")
def teacher(curated_shards, tmp_path_factory) -> Teacher:
    """A tiny stage-1 model at 32x32: 100 flow-matching steps on 20 cached windows of the curated
    clips (audio dropout 0.1 for the teacher's guidance), and its export (~15 s)."""
    from vividhead.training.trainers.distributed import shutdown_distributed
    from vividhead.training.trainers.export import export_checkpoint
    from vividhead.training.trainers.latent_cache import write_latent_cache
    from vividhead.training.trainers.sft import SFTTrainer

    tmp = tmp_path_factory.mktemp("teacher")
    raw = yaml.safe_load((REPO / "examples" / "sft_tiny_cpu.yaml").read_text())
    raw["model"].update(height_px=32, width_px=32)
    raw["data"].update(shards=str(curated_shards), num_workers=0, validation_clips=0)
    raw["log"].update(progress=False, validate_every_steps=0, preview_every_steps=0)
    raw["optim"].update(lr=3e-3, warmup_steps=1, ema_decay=0.0)
    raw["flow"] = {"audio_dropout": 0.1, "reference_dropout": 0.0}
    raw["run"].update(output_dir=str(tmp / "run"), max_steps=100)
    raw["checkpoint"] = {"every_steps": 1000}
    write_latent_cache(config_from_dict(raw, SFTConfig), tmp / "cache", windows_per_clip=4, samples_per_shard=8)
    raw["data"].update(latent_cache=str(tmp / "cache"), batch_size=4, cold_start_prob=0.0)
    trainer = SFTTrainer(config_from_dict(raw, SFTConfig))
    try:
        trainer.run()
    finally:
        shutdown_distributed()
    return Teacher(tmp / "run", export_checkpoint(tmp / "run", tmp / "export"))


# -- config -----------------------------------------------------------------------------------------
def test_shipped_configs_load_and_bad_values_name_the_key(tmp_path):
    for name in ("distill_tiny_cpu", "distill_pro"):
        cfg = load_train_config(REPO / "examples" / f"{name}.yaml", DistillConfig)
        assert cfg.distill.max_chunks >= 1 and cfg.distill.fake_updates_per_generator_update == 5
    pro = load_train_config(REPO / "examples" / "distill_pro.yaml", DistillConfig)
    assert (pro.distill.generator_lr, pro.distill.fake_score_lr, pro.distill.guidance_scale) == (2e-6, 4e-7, 3.0)
    assert pro.distill.max_chunks == 5 and pro.distill.reencode_motion
    p = tmp_path / "c.yaml"
    for text, match in (
        ("data: {shards: x, batch_size: 2}\n", r"^data\.batch_size: must be 1"),
        ("optim: {lr: 1.0e-5}\n", r"^optim\.lr: not used by distillation"),
        ("distill: {mode: teacher_forcing}\n", r"^distill\.mode: must be one of"),
        ("distill: {min_sigma: 0.9, max_sigma: 0.5}\n", r"^distill\.min_sigma"),
        ("data: {shards: x, latent_cache: x}\n", r"^data\.latent_cache: not supported"),
    ):
        p.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_train_config(p, DistillConfig)


# -- ground-truth windows -------------------------------------------------------------------------------
def test_windows_hold_whole_chunks_and_each_chunk_has_its_own_audio_cache(curated_shards, tmp_path):
    """Windows of up to K chunks (fewer for short clips); each chunk's audio context is the 8 s cache
    ending at its own last frame, read from the clip."""
    from vividhead.training.data import read_audio_context
    from vividhead.training.trainers.distributed import shutdown_distributed

    assert window_chunks(81, 33, 5, 5) == 2 and window_chunks(41, 33, 5, 5) == 1 and window_chunks(33, 33, 5, 5) == 0
    assert window_chunks(1000, 33, 5, 5) == 5 and window_chunks(146, 33, 5, 5) == 5 and window_chunks(145, 33, 5, 5) == 4
    cfg = distill_config(curated_shards, tmp_path / "run", distill={"max_chunks": 5})
    trainer = built(cfg)
    try:
        ds = trainer.dataset
        raw = {s["__key__"].rsplit("/", 1)[-1]: s for s in ds.pipeline()}
        seen = {}
        for batch in trainer.make_loader(ds, cfg.data):
            meta = batch.meta[0]
            window = trainer.prepare_window(batch)
            seen[meta["key"]] = (window.num_chunks, batch.frames.shape[1])
            for j in range(window.num_chunks):
                end = 640 * (meta["window_start_frame"] + 28 * j + 33)
                expect, _ = read_audio_context(raw[meta["key"]]["wav"], end, 128000)
                assert torch.equal(window.chunk_audio(j).cpu(), expect[None]), (meta["key"], j)
            assert window.context(window.num_chunks - 1).shape[:2] == (1, 33)
    finally:
        shutdown_distributed()
    assert seen[TWO_CHUNK_CLIP] == (2, 61)
    assert all(v == (1, 33) for k, v in seen.items() if k != TWO_CHUNK_CLIP), seen


# -- stochastic truncation -----------------------------------------------------------------------------
def test_gradients_reach_only_step_t_of_chunk_k(curated_shards, tmp_path):
    """For every (k, t'): of the 4(k-1) + t' generator calls only the last keeps a graph, the loss's
    gradient reaches that call's output and no other, each generator parameter receives exactly one
    gradient, and the two score networks none."""
    from vividhead.training.trainers.distributed import shutdown_distributed

    cfg = distill_config(curated_shards, tmp_path / "run", parallel={"strategy": "none"},
                         distill={"max_chunks": 2}, data={"clip_filter": {"keys": [TWO_CHUNK_CLIP]}})
    trainer = built(cfg)
    try:
        window = first_window(trainer)
        assert window.num_chunks == 2
        gen = trainer.raw["generator"]
        calls: list[dict] = []

        def record(module, args, output):
            entry = {"requires_grad": output.requires_grad, "got_grad": False}
            if output.requires_grad:
                output.register_hook(lambda g, e=entry: e.__setitem__("got_grad", True))
            calls.append(entry)

        handle = gen.register_forward_hook(record)
        trained = {n: p for n, p in gen.named_parameters() if p.requires_grad}
        assert len(trained) > 0 and not any(n.startswith(("text_embedding", "audio_emb")) for n in trained)
        param_hits = {n: 0 for n in trained}
        hooks = [p.register_hook(lambda g, n=n: param_hits.__setitem__(n, param_hits[n] + 1))
                 for n, p in trained.items()]
        try:
            for k in (1, 2):
                for t in (1, 2, 3, 4):
                    calls.clear()
                    for n in param_hits:
                        param_hits[n] = 0
                    out = trainer.rollout(window, k, exit_step=t - 1, grad=True)
                    assert len(calls) == 4 * (k - 1) + t
                    losses = trainer.generator_loss(window, out)
                    assert len(calls) == 4 * (k - 1) + t  # the scores are other networks
                    losses["loss"].backward()
                    assert [c["requires_grad"] for c in calls] == [False] * (len(calls) - 1) + [True], (k, t)
                    assert [c["got_grad"] for c in calls] == [False] * (len(calls) - 1) + [True], (k, t)
                    assert set(param_hits.values()) == {1}, (k, t)
                    assert out.motion.grad_fn is None and not out.motion.requires_grad
                    for role in ("fake_score", "real_score"):
                        assert all(p.grad is None for p in trainer.raw[role].parameters()), role
                    gen.zero_grad(set_to_none=True)
        finally:
            handle.remove()
            for h in hooks:
                h.remove()
    finally:
        shutdown_distributed()


def test_rollout_runs_inference_accelerated_vae_and_matches_the_stock_one(curated_shards, tmp_path):
    """``parallel.fast_vae`` (``true`` here: the default ``auto`` applies it on CUDA only): the chunk
    step the rollout advances through decodes each chunk with inference's accelerated Wan VAE (one
    decoder call per chunk, one pass, where stock calls it once per latent frame) and re-encodes its
    motion frames with it; a two-chunk rollout to the end gives the stock VAE's output (float32, same
    weights, window and noise). Off: the stock VAE."""
    from vividhead.training.trainers.distributed import shutdown_distributed

    outs, decoder_calls = {}, {}
    for fast in (True, False):
        cfg = distill_config(curated_shards, tmp_path / f"run_{fast}", parallel={"strategy": "none", "fast_vae": fast},
                             distill={"max_chunks": 2}, data={"clip_filter": {"keys": [TWO_CHUNK_CLIP]}})
        trainer = built(cfg)
        try:
            vae = trainer.encoders.vae
            assert trainer.encoders.vae_speedup == ("wan-accelerated" if fast else None)
            assert trainer.chunk_step.vae is vae
            window = first_window(trainer)
            calls = []
            hook = vae.model.decoder.register_forward_hook(lambda *_, calls=calls: calls.append(1))
            try:
                out = trainer.rollout(window, 2, exit_step=None, grad=False, rng=torch.Generator().manual_seed(0))
            finally:
                hook.remove()
            outs[fast], decoder_calls[fast] = (out.x0, out.motion), len(calls)
        finally:
            shutdown_distributed()
    latent_frames = outs[True][0].shape[2]
    assert decoder_calls == {True: 2, False: 2 * latent_frames}  # chunks 1 and 2 decoded (re-encode)
    for a, b in zip(outs[True], outs[False]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_dmd_loss_gradient_is_the_normalised_score_difference():
    """d/dx0 of 0.5 * MSE(x0, sg(x0 - grad)) = grad / N with grad = (p_fake - p_real) / mean|x0 - p_real|,
    zero on motion slots."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 5, 3, 3, generator=g).requires_grad_(True)
    p_fake, p_real = torch.randn(2, 1, 4, 5, 3, 3, generator=g)
    keep = motion_loss_mask(5, torch.tensor([2]))
    out = distribution_matching_loss(x0, p_fake, p_real, keep)
    out.loss.backward()
    n = 4 * 3 * 3 * 3  # generated slots only
    norm = (x0.detach() - p_real)[:, :, 2:].abs().mean()
    expect = torch.zeros_like(x0)
    expect[:, :, 2:] = (p_fake - p_real)[:, :, 2:] / norm / n
    assert torch.allclose(x0.grad, expect, atol=1e-7)
    assert torch.isclose(out.loss, 0.5 * ((p_fake - p_real)[:, :, 2:] / norm).pow(2).mean())


# -- oracle vs self-correcting -------------------------------------------------------------------------
def test_oracle_and_self_correcting_differ_only_in_the_teachers_motion_slots(curated_shards, tmp_path):
    """Same rollout and draws in both modes: fake_score always sees the predicted motion latents clean;
    real_score sees the ground-truth ones clean (oracle) or the predicted ones noised like the rest
    (self-correcting); generated slots are the same noised sample for both networks in both modes;
    the teacher gets audio CFG (second half: zeroed audio); only oracle adds the regression loss."""
    from vividhead.training.trainers.distributed import shutdown_distributed

    cfg = distill_config(curated_shards, tmp_path / "run", distill={"max_chunks": 2},
                         data={"clip_filter": {"keys": [TWO_CHUNK_CLIP]}, "cold_start_prob": 0.0})
    trainer = built(cfg)
    try:
        window = first_window(trainer)
        with torch.no_grad():
            out = trainer.rollout(window, 2, exit_step=3, grad=False)
        gt = window.gt_latents(1)
        m = out.num_motion
        assert m == 2 and not torch.allclose(out.motion, gt[:, :, :m])
        seen: dict[str, list] = {}
        hooks = [trainer.raw[r].register_forward_pre_hook(lambda mod, args, r=r: seen.setdefault(r, []).append(args))
                 for r in ("fake_score", "real_score")]
        results = {}
        state = trainer.generator.get_state()
        try:
            for mode in ("oracle", "self_correcting"):
                seen.clear()
                trainer.cfg = dataclasses.replace(trainer.cfg, distill=dataclasses.replace(trainer.cfg.distill, mode=mode))
                trainer.generator.set_state(state)
                losses = trainer.generator_loss(window, out)
                (fake_args,), (real_args,) = seen["fake_score"], seen["real_score"]
                results[mode] = (fake_args, real_args, losses)
        finally:
            for h in hooks:
                h.remove()
    finally:
        shutdown_distributed()
    for mode, (fake_args, real_args, losses) in results.items():
        x_s = add_noise(out.x0, losses["noise"], losses["sigma"])
        fake_x, real_x = fake_args[0], real_args[0]
        assert fake_x.shape[0] == 1 and real_x.shape[0] == 2  # teacher: cond + uncond in one batch
        assert torch.equal(real_x[0], real_x[1])
        assert torch.equal(real_args[2][0], window.context(1)[0]) and torch.all(real_args[2][1] == 0)
        assert torch.equal(fake_x, overwrite_motion(x_s, out.motion))
        assert torch.equal(real_x[:1, :, m:], fake_x[:, :, m:])  # generated slots: the same sample
        if mode == "oracle":
            assert torch.equal(real_x[:1, :, :m], gt[:, :, :m])
            assert losses["reg_loss"] > 0
            expect = ((out.x0 - gt)[:, :, m:]).pow(2).mean()
            assert torch.isclose(losses["reg_loss"], expect)
        else:
            assert torch.equal(real_x[:1], x_s)  # predicted motion latents, noised
            assert not torch.allclose(real_x[:1, :, :m], out.motion)
            assert losses["reg_loss"] == 0
    # Same draws: the fake score's input is identical in both modes.
    assert torch.equal(results["oracle"][0][0], results["self_correcting"][0][0])


# -- the generator-objective seam -------------------------------------------------------------------------
def test_a_registered_objective_is_a_mode_and_trains_the_generator(curated_shards, tmp_path):
    """A toy objective (plain regression onto the ground-truth latents) registered under a new mode is
    accepted by the config, drives one generator update, and logs its own metrics; an unknown mode
    fails at config load with one line naming the key and the registered modes."""
    from vividhead.training.trainers import objectives
    from vividhead.training.trainers.objectives import OBJECTIVES, GeneratorObjective, masked_mean, register_objective

    calls = []

    class PlainRegression(GeneratorObjective):
        metric_names = ("toy_reg_loss",)
        reduced_metrics = ("toy_reg_loss",)

        def __call__(self, trainer, window, out):
            gt = window.gt_latents(out.chunk)
            keep = motion_loss_mask(out.x0.shape[2], torch.tensor([out.num_motion]))
            loss = masked_mean((out.x0 - gt).pow(2), keep)
            calls.append(out.x0.requires_grad)
            return {"loss": loss, "toy_reg_loss": loss.detach()}

    assert list(OBJECTIVES) == ["oracle", "self_correcting"]
    register_objective("toy_regression")(PlainRegression)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_objective("oracle")(PlainRegression)
        p = tmp_path / "c.yaml"
        p.write_text("distill: {mode: teacher_forcing}\n")
        with pytest.raises(ConfigError) as err:
            load_train_config(p, DistillConfig)
        assert str(err.value) == ("distill.mode: must be one of ['oracle', 'self_correcting', 'toy_regression'], "
                                  "got 'teacher_forcing'")
        cfg = distill_config(curated_shards, tmp_path / "run", run={"max_steps": 1},
                             distill={"mode": "toy_regression", "max_chunks": 1, "fake_updates_per_generator_update": 1})
        trainer = run(cfg)
    finally:
        del objectives.OBJECTIVES["toy_regression"]
    assert calls == [True]  # one generator update, through the graph of step t'
    (logged,) = trainer.result["history"]
    assert logged["toy_reg_loss"] > 0 and logged["generator_loss"] == pytest.approx(logged["toy_reg_loss"])
    assert "dmd_loss" not in logged and "reg_loss" not in logged
    initial = full_weights(trainer.raw["real_score"])  # real_score is the untouched initial DiT
    assert any(not torch.equal(trainer.final["generator"][k], initial[k]) for k in initial)


# -- the 1:5 schedule -----------------------------------------------------------------------------------
def test_one_generator_update_per_five_fake_score_updates(curated_shards, tmp_path):
    cfg = distill_config(curated_shards, tmp_path / "run", run={"max_steps": 10}, distill={"max_chunks": 1})
    trainer = run(cfg)
    roles = [r for r, _, _ in trainer.draws]
    assert roles == ["fake_score"] * 5 + ["generator"] + ["fake_score"] * 5 + ["generator"]
    gen_steps = [h["step"] for h in trainer.result["history"] if "dmd_loss" in h]
    assert gen_steps == [5, 10]
    assert all("fake_score_loss" in h for h in trainer.result["history"])

    def adam_steps(role):
        opt = trainer.optimizers[role]
        return {int(s["step"]) for s in opt.state.values()}

    assert adam_steps("generator") == {2} and adam_steps("fake_score") == {10}


def test_nan_loss_stops_before_the_update(curated_shards, tmp_path, monkeypatch):
    """A non-finite fake-score loss at step 3 stops the run before that update, naming the step and
    the last good checkpoint."""
    from vividhead.flow_matching import flow_matching_loss as real_loss
    from vividhead.training.trainers import distill
    from vividhead.training.trainers.runtime import TrainingDiverged

    calls = []

    def poisoned(*args, **kwargs):
        out = real_loss(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(distill, "flow_matching_loss", poisoned)
    cfg = distill_config(curated_shards, tmp_path / "run", run={"max_steps": 5}, checkpoint={"every_steps": 2},
                         distill={"max_chunks": 1})
    with pytest.raises(TrainingDiverged, match=r"step 3.*step_00000002"):
        run(cfg)


# -- k and t' on 2 gloo ranks --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, shards: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = distill_config(Path(shards), Path(out) / "run", run={"max_steps": 4},
                         distill={"max_chunks": 2, "fake_updates_per_generator_update": 2})
    trainer = run(cfg)
    (Path(out) / f"draws{rank}.json").write_text(json.dumps(trainer.draws))


def test_k_and_t_agree_across_two_gloo_ranks(curated_shards, tmp_path):
    """Two processes (TCPStore rendezvous, FSDP2 over gloo) draw on rank 0 and broadcast: the same
    (role, k, t') sequence on both ranks, and the run completes (no collective mismatch)."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_worker, args=(2, _free_port(), str(curated_shards), str(tmp_path)), nprocs=2, join=True)
    d0 = json.loads((tmp_path / "draws0.json").read_text())
    d1 = json.loads((tmp_path / "draws1.json").read_text())
    assert d0 == d1 and len(d0) == 6  # 4 fake-score + 2 generator rollouts
    assert all(1 <= k <= 2 and 1 <= t <= 4 for _, k, t in d0)


# -- exact resume --------------------------------------------------------------------------------------
def test_resume_is_exact(curated_shards, teacher, tmp_path):
    """From a stage-1 checkpoint (DCP, its raw weights): 4 steps straight == 2 steps, a fresh trainer,
    --resume, 2 more: generator, fake score and generator EMA bit for bit (data position, rollout
    draws, noise and every RNG stream restored; the frozen teacher is rebuilt from the init checkpoint)."""
    common = {"distill": {"max_chunks": 2, "fake_updates_per_generator_update": 2, "generator_ema_decay": 0.9,
                          "init_weights": "raw"},
              "checkpoint": {"every_steps": 2}}
    straight = run(distill_config(curated_shards, tmp_path / "a", teacher.run, run={"max_steps": 4}, **common))
    run(distill_config(curated_shards, tmp_path / "b", teacher.run, run={"max_steps": 2}, **common))
    resumed = run(distill_config(curated_shards, tmp_path / "b", teacher.run, run={"max_steps": 4}, **common),
                  resume="auto")
    assert resumed.result["step"] == 4
    assert straight.cfg.model.height_px == 32  # the model section came from the stage-1 run
    for role in ("generator", "fake_score"):
        for k, v in straight.final[role].items():
            assert torch.equal(v, resumed.final[role][k]), (role, k)
    for k, v in straight.emas["generator"].shadow.items():
        assert torch.equal(full(v), full(resumed.emas["generator"].shadow[k])), k
    assert straight.draws[3:] == resumed.draws  # [f, f, g | f, f, g]
    assert [h["loss"] for h in straight.result["history"][2:]] == [h["loss"] for h in resumed.result["history"]]


# -- a tiny distillation --------------------------------------------------------------------------------
#: Steps of the tiny distillation: 75 fake-score and 15 generator updates.
DISTILL_STEPS = 75


@pytest.fixture(scope="module")
def distilled(curated_shards, teacher, tmp_path_factory):
    """75 steps (1:5) from the tiny teacher's export, oracle mode, guidance 3, K = 1 (every training
    clip holds one chunk once the two-chunk clip is held out for the preview); the critic learns
    faster than the generator (lr 1e-2 vs 1e-3, the tiny example's rates), then the export."""
    from vividhead.training.trainers.export import export_checkpoint

    out = tmp_path_factory.mktemp("distill")
    cfg = distill_config(curated_shards, out / "run", teacher.export, run={"max_steps": DISTILL_STEPS},
                         data={"validation_clips": 1},
                         log={"every_steps": 25, "validate_every_steps": DISTILL_STEPS,
                              "preview_every_steps": DISTILL_STEPS},
                         distill={"max_chunks": 2, "generator_ema_decay": 0.0})
    trainer = run(cfg)
    export = export_checkpoint(out / "run", out / "export")
    return trainer, out, export


def test_tiny_distillation_lowers_the_dmd_loss(distilled):
    """The logged DMD loss of the last 3 generator updates is under half that of the first 3 (the
    critic tracks the 4-step generator's samples at once, the generator then closes the gap to the
    guided teacher); previews and validation ran on the held-out two-chunk clip; TensorBoard has the
    k and t' histograms."""
    trainer, out, _ = distilled
    hist = trainer.result["history"]
    dmd = [h["dmd_loss"] for h in hist if "dmd_loss" in h]
    assert len(dmd) == DISTILL_STEPS // 5
    first, last = sum(dmd[:3]) / 3, sum(dmd[-3:]) / 3
    print(f"DMD loss: first 3 generator updates {first:.3f}, last 3 {last:.3f}, factor {first / last:.2f}")
    assert last < 0.5 * first, (first, last, dmd)
    assert all(h["reg_loss"] > 0 for h in hist if "reg_loss" in h)  # oracle mode
    assert (out / "run" / "previews" / f"step_{DISTILL_STEPS:08d}.mp4").stat().st_size > 0
    from test_sft import assert_preview_has_window_audio

    assert_preview_has_window_audio(out / "run" / "previews" / f"step_{DISTILL_STEPS:08d}.mp4")
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/rollout_mse" in r]
    assert val and val[-1]["val/chunks"] == 2.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "run" / "tensorboard"), size_guidance={"histograms": 0})
    acc.Reload()
    assert {"rollout/k", "rollout/t_exit"} <= set(acc.Tags()["histograms"])
    assert {"train/dmd_loss", "train/reg_loss", "train/fake_score_loss", "train/generator_grad_norm",
            "train/fake_score_grad_norm"} <= set(acc.Tags()["scalars"])


def test_exported_generator_runs_in_vividhead_infer(distilled, tmp_path, image_dir, audio_dir):
    import soundfile as sf

    from vividhead.cli import build_app
    from vividhead.media import count_video_frames

    _, _, export = distilled
    meta = json.loads((export / "vividhead_export.json").read_text())
    assert meta["weights"] == "raw" and meta["step"] == DISTILL_STEPS
    speech = tmp_path / "speech.wav"
    data, sr = sf.read(str(audio_dir / "speech_jfk_16k.wav"), dtype="float32")
    sf.write(str(speech), data[: sr * 2], sr)
    res = CliRunner().invoke(build_app(), [
        "infer", "--checkpoint", str(export), "--image", str(image_dir / "face_frontal_happy_256.png"),
        "--audio", str(speech), "--out", str(tmp_path / "out.mp4"), "--device", "cpu", "--dtype", "fp32"])
    assert res.exit_code == 0, res.output
    assert count_video_frames(tmp_path / "out.mp4") == 50


def test_rollout_command_plots_per_chunk_drift(distilled, tmp_path, image_dir, audio_dir, capsys):
    """`vividhead eval rollout` on the 60 s fixture audio, 4 chunks: one drift row per chunk (colour,
    sharpness, latent norm; Light-ASD attempted with the fixture weights), the MP4 and the plot; its
    alias `vividhead train rollout` fails on too short an audio with one line."""
    from vividhead.cli import build_app, main
    from vividhead.media import count_video_frames

    _, _, export = distilled
    res = CliRunner().invoke(build_app(), [
        "eval", "rollout", "--checkpoint", str(export), "--image", str(image_dir / "face_frontal_happy_256.png"),
        "--audio", str(audio_dir / "speech_en_60s_16k.wav"), "--chunks", "4", "--out", str(tmp_path / "roll"),
        "--device", "cpu", "--dtype", "fp32"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "roll" / "drift.json").read_text())
    assert report["chunks"] == 4 and report["frames"] == 4 * 28
    assert [r["chunk"] for r in report["rows"]] == [0, 1, 2, 3]
    assert all(r["num_frames"] == 28 for r in report["rows"])
    for r in report["rows"]:
        assert r["latent_norm"] > 0 and r["sharpness"] >= 0 and r["color_delta_e"] >= 0
        assert "asd_score" in r or "face_error" in r  # a 32x32 toy face may not be detected
    assert (tmp_path / "roll" / "drift.png").stat().st_size > 0
    assert count_video_frames(tmp_path / "roll" / "rollout.mp4") == 4 * 28
    with pytest.raises(SystemExit) as stop:  # the vividhead command: one error line, exit code 2
        main(["train", "rollout", "--checkpoint", str(export), "--image", str(image_dir / "face_frontal_happy_256.png"),
              "--audio", str(audio_dir / "speech_jfk_16k.wav"), "--chunks", "1000", "--out", str(tmp_path / "x"),
              "--device", "cpu", "--dtype", "fp32", "--no-asd"])
    assert stop.value.code == 2 and "1000 chunks need" in capsys.readouterr().err
