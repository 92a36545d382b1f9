"""Fine-tuning: LoRA through peft over a frozen base, and full fine-tuning, on real clips
curated by our own pipeline (``curated_shards``), tiny DiT on the CPU (examples/finetune_tiny_lora_cpu.yaml).

Most runs read a latent cache of three curated windows (seconds per run); ``lora_run`` is one
LoRA run that the export, infer and stage-2 tests share.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from vividhead.config import ConfigError
from vividhead.errors import UserError
from vividhead.training.trainers.config import config_from_dict, load_train_config
from vividhead.training.trainers.finetune import FinetuneConfig, FinetuneTrainer

REPO = Path(__file__).resolve().parents[2]
CLIPS = ["talk_retalking_face2-0000", "talk_retalking_face3-0000", "talk_hdtf_aoc_512-0000"]


def ft_config(out: Path, cache: Path | None = None, shards: Path | None = None, **sections) -> FinetuneConfig:
    """The shipped tiny CPU config on a latent cache (or shards) and ``out``, with section overrides."""
    raw = yaml.safe_load((REPO / "examples" / "finetune_tiny_lora_cpu.yaml").read_text())
    raw["data"].update(num_workers=0, validation_clips=0, cold_start_prob=0.0, clip_filter={"keys": CLIPS})
    if cache is not None:
        raw["data"].update(latent_cache=str(cache), batch_size=3)
    if shards is not None:
        raw["data"]["shards"] = str(shards)
    raw["log"].update(progress=False, validate_every_steps=0, preview_every_steps=0)
    raw["run"].update(output_dir=str(out))
    raw["flow"] = {"audio_dropout": 0.0, "reference_dropout": 0.0}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw, FinetuneConfig)


def run(cfg: FinetuneConfig, resume: str | None = None) -> FinetuneTrainer:
    from vividhead.training.trainers.distributed import shutdown_distributed

    trainer = FinetuneTrainer(cfg, resume=resume)
    try:
        trainer.result = trainer.run()
        trainer.final = {k: v.detach().clone() for k, v in trainer.transformer.state_dict().items()}
    finally:
        shutdown_distributed()
    return trainer


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def base_key(name: str) -> str:
    """A LoRA-wrapped module's base key in the released layout (``q.base_layer.weight`` -> ``q.weight``)."""
    return name.replace(".base_layer.", ".")


@pytest.fixture(scope="module")
def cache(curated_shards, tmp_path_factory) -> Path:
    from vividhead.training.trainers.latent_cache import write_latent_cache

    out = tmp_path_factory.mktemp("ft_cache") / "cache"
    cfg = ft_config(out.parent / "unused", shards=curated_shards)
    assert write_latent_cache(cfg, out, windows_per_clip=1, samples_per_shard=2) == 3
    return out


@pytest.fixture(scope="module")
def lora_run(cache, tmp_path_factory) -> FinetuneTrainer:
    """40 LoRA steps on the three cached windows (raw weights, no EMA)."""
    return run(ft_config(tmp_path_factory.mktemp("ft") / "run", cache, run={"max_steps": 40},
                         optim={"lr": 1e-2, "warmup_steps": 1}, checkpoint={"every_steps": 1000}))


@pytest.fixture(scope="module")
def exports(lora_run, tmp_path_factory) -> dict[str, Path]:
    """The run exported merged, with --no-merge, and the no-merge export's base alone (its metadata
    without ``lora``): what ``infer --lora`` goes over."""
    from vividhead.cli import build_app

    root = tmp_path_factory.mktemp("ft_exports")
    runner = CliRunner()
    for name, extra in (("merged", []), ("separate", ["--no-merge"])):
        res = runner.invoke(build_app(), ["train", "export", str(lora_run.out), "--out", str(root / name), *extra])
        assert res.exit_code == 0, res.output
    base = root / "base"
    shutil.copytree(root / "separate", base)
    shutil.rmtree(base / "lora")
    meta = json.loads((base / "vividhead_export.json").read_text())
    meta.pop("lora")
    meta["format"] = 1
    (base / "vividhead_export.json").write_text(json.dumps(meta))
    return {"merged": root / "merged", "separate": root / "separate", "base": base}


# -- config -----------------------------------------------------------------------------------------
def test_shipped_configs_load():
    from vividhead.models.configs import get_variant
    from vividhead.training.trainers.models import resolve_variant

    for name, variant in (("finetune_lite_lora", "lite"), ("finetune_pro_lora", "pro")):
        cfg = load_train_config(REPO / "examples" / f"{name}.yaml", FinetuneConfig)
        assert (cfg.model.init, cfg.model.variant, cfg.finetune.method) == ("flashhead", variant, "lora")
        assert resolve_variant(cfg.model).transformer == get_variant(variant).transformer  # released shapes
        assert cfg.data.batch_size == 1 and cfg.parallel.strategy == "none"
    tiny = load_train_config(REPO / "examples" / "finetune_tiny_lora_cpu.yaml", FinetuneConfig)
    assert tiny.run.device == "cpu" and tiny.finetune.method == "lora"


@pytest.mark.parametrize("text, message", [
    ("finetune: {targets: [self_attn, text_attn]}", "finetune.targets"),
    ("finetune: {rank: 0}", "finetune.rank"),
    ("finetune: {method: qlora}", "finetune.method"),
])
def test_bad_finetune_values_name_the_key(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_train_config(p, FinetuneConfig)


def test_groups_map_to_the_dit_linears():
    from tiny_models import TINY_DIT

    from vividhead.models.flashhead import FlashHeadTransformer
    from vividhead.models.lora import target_modules

    dit = FlashHeadTransformer.from_config_dataclass(TINY_DIT)
    assert target_modules(dit, ["self_attn"]) == [f"blocks.{i}.self_attn.{p}" for i in range(2) for p in "qkvo"]
    assert target_modules(dit, ["cross_attn"]) == [f"blocks.{i}.cross_attn.{p}" for i in range(2) for p in "qkvo"]
    assert target_modules(dit, ["ffn"]) == [f"blocks.{i}.ffn.{j}" for i in range(2) for j in (0, 2)]
    assert len(target_modules(dit, ["self_attn", "cross_attn", "ffn"])) == 20


# -- training ---------------------------------------------------------------------------------------
def test_only_adapters_train_base_bit_identical_loss_falls(lora_run, cache, tmp_path):
    trainer = lora_run
    assert trainer.trainable_params < 0.05 * trainer.total_params
    trained = {n for n, p in trainer.transformer.named_parameters() if p.requires_grad}
    assert trained and all(is_adapter(n) for n in trained)
    opt_params = {id(p) for g in trainer.optimizers["transformer"].param_groups for p in g["params"]}
    assert opt_params == {id(p) for n, p in trainer.transformer.named_parameters() if n in trained}
    # The base after 40 steps is the base as built (same seed, same init), bit for bit.
    fresh = FinetuneTrainer(ft_config(tmp_path / "fresh", cache))
    fresh.build()
    initial = fresh.transformer.state_dict()
    for k, v in trainer.final.items():
        if not is_adapter(k):
            assert torch.equal(v, initial[k]), k
    assert any(not torch.equal(trainer.final[k], initial[k]) for k in trainer.final if ".lora_B." in k)
    losses = [h["loss"] for h in trainer.result["history"]]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_checkpoint_holds_only_adapters_and_resume_is_exact(cache, tmp_path):
    """4 steps straight == 2 steps, --resume, 2 more (adapters, their Adam moments and EMA, RNG, data
    position); the checkpoint holds the adapters and their optimiser state only."""
    from torch.distributed.checkpoint import FileSystemReader

    common = {"optim": {"ema_decay": 0.9, "warmup_steps": 2}, "checkpoint": {"every_steps": 2},
              "data": {"cold_start_prob": 0.5, "batch_size": 1}}
    straight = run(ft_config(tmp_path / "a", cache, run={"max_steps": 4}, **common))
    run(ft_config(tmp_path / "b", cache, run={"max_steps": 2}, **common))
    resumed = run(ft_config(tmp_path / "b", cache, run={"max_steps": 4}, **common), resume="auto")
    assert resumed.result["step"] == 4
    for k, v in straight.final.items():
        assert torch.equal(v, resumed.final[k]), k
    for k, v in straight.emas["transformer"].shadow.items():
        assert torch.equal(v, resumed.emas["transformer"].shadow[k]), k
    assert [h["loss"] for h in straight.result["history"]][2:] == [h["loss"] for h in resumed.result["history"]]

    ckpt = straight.result["last_checkpoint"]
    stored = FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    model_keys = {k.removeprefix("model.transformer.") for k in stored if k.startswith("model.")}
    assert model_keys == {n for n, p in straight.transformer.named_parameters() if p.requires_grad}
    numel = sum(math.prod(m.size) for m in stored.values() if hasattr(m, "size"))
    adapters, total = straight.trainable_params, straight.total_params
    assert numel <= 4 * adapters + 64  # weights, two Adam moments, EMA (+ step counters)
    assert numel < 0.2 * total  # a stage-1 checkpoint of the same DiT stores >= 3 * total
    size = sum(f.stat().st_size for f in Path(ckpt).iterdir())
    assert size < 1_000_000, size


def test_full_method_trains_everything_with_stage1_checkpoints(cache, tmp_path):
    from torch.distributed.checkpoint import FileSystemReader

    trainer = run(ft_config(tmp_path / "full", cache, finetune={"method": "full"}, run={"max_steps": 2}))
    assert not hasattr(trainer, "peft_model")
    assert all(p.requires_grad for n, p in trainer.transformer.named_parameters()
               if not n.startswith(("text_embedding", "audio_emb")))
    stored = FileSystemReader(str(trainer.result["last_checkpoint"])).read_metadata().state_dict_metadata
    assert {k.removeprefix("model.transformer.") for k in stored if k.startswith("model.")} == \
        set(trainer.transformer.state_dict())
    from vividhead.training.trainers.export import export_checkpoint

    with pytest.raises(Exception, match="--no-merge needs a LoRA"):
        export_checkpoint(tmp_path / "full", tmp_path / "e", merge=False)


# -- export and inference ---------------------------------------------------------------------------
def test_merged_export_equals_base_plus_adapters(lora_run, exports):
    """The merged export's DiT gives peft's unmerged base + adapters outputs; the separate export
    holds the base and peft's adapter folder (format 2)."""
    from vividhead.export_format import ADAPTER_FORMAT_VERSION, FORMAT_VERSION, read_export
    from vividhead.inference.pipeline import FlashHeadModels
    from vividhead.training.trainers.export import lora_model, read_checkpoint_state

    merged, separate = read_export(exports["merged"]), read_export(exports["separate"])
    assert (merged.version, merged.kind, merged.lora["merged"], merged.lora_dir) == (FORMAT_VERSION, "finetune",
                                                                                     True, None)
    assert separate.version == ADAPTER_FORMAT_VERSION and separate.lora_dir == exports["separate"] / "lora"
    assert (separate.lora_dir / "adapter_config.json").is_file()
    assert separate.lora["rank"] == 2 and separate.lora["targets"] == ["self_attn", "cross_attn", "ffn"]

    cfg, adapters, _ = read_checkpoint_state(lora_run.out)
    peft_model = lora_model(cfg, adapters)  # unmerged: base + (alpha/r) B A at every call
    dit = FlashHeadModels.from_export(exports["merged"], device="cpu", dtype=torch.float32).transformer
    base = FlashHeadModels.from_export(exports["base"], device="cpu", dtype=torch.float32).transformer
    base_sd = base.state_dict()  # --no-merge keeps the frozen base as it trained
    for n, v in lora_run.final.items():
        if not is_adapter(n):
            assert torch.equal(base_sd[base_key(n)], v), n
    t = dit.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, t.out_dim, 9, 8, 8, generator=g)
    ctx = torch.randn(2, 33, t.audio_window, t.audio_layers, t.audio_channels, generator=g)
    ts = torch.tensor([700.0, 300.0])
    with torch.no_grad():
        want = peft_model(x, ts, ctx, x.flip(0))
        got = dit(x, ts, ctx, x.flip(0))
        plain = base(x, ts, ctx, x.flip(0))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # the adapters changed the model


def _frames(path: Path):
    import av
    import numpy as np

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_infer_lora_over_a_base_gives_the_merged_frames(exports, tmp_path, image_dir, audio_dir):
    import numpy as np
    import soundfile as sf

    from vividhead.cli import build_app

    speech = tmp_path / "speech.wav"
    data, sr = sf.read(str(audio_dir / "speech_jfk_16k.wav"), dtype="float32")
    sf.write(str(speech), data[: sr * 2], sr)
    common = ["--image", str(image_dir / "face_frontal_happy_256.png"), "--audio", str(speech),
              "--device", "cpu", "--dtype", "fp32"]
    runs = {
        "merged": ["--checkpoint", str(exports["merged"])],
        "separate": ["--checkpoint", str(exports["separate"])],  # applies its own lora/ at load
        "lora": ["--checkpoint", str(exports["base"]), "--lora", str(exports["separate"] / "lora")],
        "base": ["--checkpoint", str(exports["base"])],
    }
    runner = CliRunner()
    frames = {}
    for name, args in runs.items():
        res = runner.invoke(build_app(), ["infer", *args, *common, "--out", str(tmp_path / f"{name}.mp4")])
        assert res.exit_code == 0, res.output
        frames[name] = _frames(tmp_path / f"{name}.mp4").astype(np.int16)
    assert frames["merged"].shape[0] == 50
    for name in ("separate", "lora"):
        assert np.abs(frames[name] - frames["merged"]).max() <= 1, name
    assert np.abs(frames["base"] - frames["merged"]).max() > 1  # the adapters show in the frames

    res = runner.invoke(build_app(), ["infer", *runs["base"], *common, "--out", str(tmp_path / "x.mp4"),
                                      "--lora", str(tmp_path)])
    assert isinstance(res.exception, UserError) and "adapter_config.json" in str(res.exception)  # exit 2, one line


# -- stage 2 ----------------------------------------------------------------------------------------
def test_stage2_starts_from_the_finetuned_model(lora_run, exports, curated_shards, tmp_path):
    """distill.init_checkpoint takes the merged export (and the fine-tuning run itself): all three
    networks start from base + adapters."""
    from vividhead.inference.pipeline import FlashHeadModels
    from vividhead.training.trainers.distill import DistillTrainer
    from vividhead.training.trainers.distill_config import DistillConfig
    from vividhead.training.trainers.distributed import shutdown_distributed

    want = FlashHeadModels.from_export(exports["merged"], device="cpu", dtype=torch.float32).transformer.state_dict()
    for i, init in enumerate((exports["merged"], lora_run.out)):
        raw = yaml.safe_load((REPO / "examples" / "distill_tiny_cpu.yaml").read_text())
        raw["data"].update(shards=str(curated_shards), num_workers=0, validation_clips=0)
        raw["run"].update(output_dir=str(tmp_path / f"d{i}"))
        raw["distill"]["init_checkpoint"] = str(init)
        trainer = DistillTrainer(config_from_dict(raw, DistillConfig))
        try:
            trainer.build()
            for role in ("generator", "fake_score", "real_score"):
                got = trainer.raw[role].state_dict()
                for k, v in want.items():
                    full = got[k].full_tensor() if hasattr(got[k], "full_tensor") else got[k]
                    torch.testing.assert_close(full, v, rtol=0, atol=1e-6, msg=f"{init} {role} {k}")
        finally:
            shutdown_distributed()
