"""Speed options of the trainers on the tiny DiT (CPU): activation checkpointing modes, the SDPA
backend, the fused optimiser, the EMA and the frozen VAE's speed-up (``parallel.fast_vae``). Each
option must leave the numbers as they are."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter

import pytest
import torch
from tiny_models import TINY_DIT
from torch.utils._python_dispatch import TorchDispatchMode

from vividhead.config import ConfigError, build_dataclass
from vividhead.models.flashhead import FlashHeadTransformer
from vividhead.training.trainers.config import (
    ATTENTION_BACKENDS,
    CHECKPOINTING_MODES,
    VAE_COMPILE_MODES,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
)
from vividhead.training.trainers.distributed import (
    CheckpointedModule,
    DistEnv,
    apply_activation_checkpointing,
    set_attention_backend,
    use_expandable_segments,
    wrap_model,
)
from vividhead.training.trainers.runtime import EMA, make_optimizer

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
#: Four blocks, so "every other block" differs from "every block" and from "the first".
DIT4 = dataclasses.replace(TINY_DIT, num_layers=4)


class CountOps(TorchDispatchMode):
    """Counts the aten ops that run (ops a selective checkpoint serves from its cache never do)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def tiny_dit(seed: int = 0) -> FlashHeadTransformer:
    torch.manual_seed(seed)
    return FlashHeadTransformer.from_config_dataclass(DIT4).float().train()


def dit_inputs(seed: int = 1) -> tuple[torch.Tensor, ...]:
    """``x, t, context, y, target`` of a 3-latent-frame, 8x8 chunk (48 tokens)."""
    g = torch.Generator().manual_seed(seed)
    c = DIT4.out_dim
    x = torch.randn(1, c, 3, 8, 8, generator=g)
    context = torch.randn(1, 1 + 4 * 2, DIT4.audio_window, DIT4.audio_layers, DIT4.audio_channels, generator=g)
    return x, torch.tensor([700.0]), context, torch.randn(1, c, 3, 8, 8, generator=g), torch.randn(1, c, 3, 8, 8,
                                                                                                   generator=g)


def loss_and_grads(model: torch.nn.Module, call=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, t, context, y, target = dit_inputs()
    out = (call or model)(x, t, context, y)
    loss = torch.nn.functional.mse_loss(out, target)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(ref: tuple, got: tuple, tol: float) -> None:
    (l0, g0), (l1, g1) = ref, got
    torch.testing.assert_close(l1, l0, rtol=tol, atol=tol)
    assert g0.keys() == g1.keys()
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=tol, atol=tol, msg=lambda m, k=k: f"{k}: {m}")


def count_calls(model: FlashHeadTransformer) -> dict[str, int]:
    """Forward-hook counters on each block's first self-attention, audio cross-attention and FFN
    linear: a module inside a checkpointed region runs again in the backward pass."""
    calls: dict[str, int] = Counter()
    for i, blk in enumerate(model.blocks):
        for name, m in (("self_attn", blk.self_attn.q), ("cross_attn", blk.cross_attn.q), ("ffn", blk.ffn[0])):
            m.register_forward_hook(lambda *_, key=f"{i}.{name}": calls.__setitem__(key, calls[key] + 1))
    return calls


# -- config -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, mode", [(False, "none"), (True, "all"), ("every_other", "every_other"),
                                         ("attention", "attention"), ("save_matmuls", "save_matmuls")])
def test_checkpointing_reads_the_old_booleans_and_the_modes(value, mode):
    cfg = build_dataclass("parallel", ParallelConfig, {"activation_checkpointing": value})
    assert cfg.activation_checkpointing == mode
    assert ParallelConfig().activation_checkpointing == "none"


@pytest.mark.parametrize("raw, message", [
    ({"activation_checkpointing": "half"}, r"^parallel\.activation_checkpointing: must be one of \['none', 'all', "
                                           r"'every_other', 'attention', 'save_matmuls', False, True\], got 'half'$"),
    ({"activation_checkpointing": None}, r"^parallel\.activation_checkpointing: must be one of"),
    ({"attention_backend": "fa3"}, r"^parallel\.attention_backend: must be one of \['auto', 'flash', 'cudnn', "
                                   r"'efficient', 'math'\], got 'fa3'$"),
    ({"vae_compile": "reduce-overhead"}, r"^parallel\.vae_compile: must be one of \['default', "
                                         r"'max-autotune-no-cudagraphs'\], got 'reduce-overhead'$"),
    ({"fast_vae": "yes"}, r"^parallel\.fast_vae: must be one of \['auto', True, False\], got 'yes'$"),
])
def test_bad_speed_options_fail_at_load_naming_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        build_dataclass("parallel", ParallelConfig, raw)


def test_config_choices_match_the_literals():
    import typing

    hints = typing.get_type_hints(ParallelConfig)
    assert set(typing.get_args(hints["activation_checkpointing"])) == set(CHECKPOINTING_MODES) | {False, True}
    assert typing.get_args(hints["attention_backend"]) == ATTENTION_BACKENDS
    from vividhead.models.wan_vae_fast import COMPILE_MODES

    assert VAE_COMPILE_MODES == COMPILE_MODES  # what accelerate_vae accepts


def test_fast_vae_is_auto_by_default_with_inference_compile_mode_and_null_turns_compilation_off():
    import inspect

    from vividhead.models.vae import accelerate_vae

    assert ParallelConfig().fast_vae == "auto"
    assert build_dataclass("parallel", ParallelConfig, {"fast_vae": True}).fast_vae is True
    assert ParallelConfig().vae_compile == inspect.signature(accelerate_vae).parameters["compile_mode"].default
    assert build_dataclass("parallel", ParallelConfig, {"vae_compile": None}).vae_compile is None


# -- activation checkpointing ------------------------------------------------------------------------
#: Calls per step of (self-attention, cross-attention, FFN) in blocks 0..3 for each mode.
EXPECTED_CALLS = {
    "none": [(1, 1, 1)] * 4,
    "all": [(2, 2, 2)] * 4,
    "every_other": [(2, 2, 2), (1, 1, 1)] * 2,
    "attention": [(2, 1, 1)] * 4,
    "save_matmuls": [(2, 2, 2)] * 4,
}
EXPECTED_WRAPPED = {"none": [], "all": ["0", "1", "2", "3"], "every_other": ["0", "2"],
                    "attention": [f"{i}.self_attn" for i in range(4)], "save_matmuls": ["0", "1", "2", "3"]}


@pytest.mark.parametrize("mode", CHECKPOINTING_MODES)
def test_every_checkpointing_mode_gives_the_loss_and_gradients_of_none(mode):
    ref = loss_and_grads(tiny_dit())
    model = tiny_dit()
    wrapped = apply_activation_checkpointing(model.blocks, mode)
    assert wrapped == EXPECTED_WRAPPED[mode]
    calls = count_calls(model)
    got = loss_and_grads(model)
    assert_same(ref, got, 1e-6)
    per_block = [tuple(calls[f"{i}.{n}"] for n in ("self_attn", "cross_attn", "ffn")) for i in range(4)]
    assert per_block == EXPECTED_CALLS[mode]


def test_save_matmuls_recomputes_the_pointwise_ops_but_not_the_matmuls():
    counts = {}
    for mode in ("none", "all", "save_matmuls"):
        model = tiny_dit()
        apply_activation_checkpointing(model.blocks, mode)
        with CountOps() as c:
            loss_and_grads(model)
        counts[mode] = c.ops
    assert counts["all"]["addmm"] > counts["none"]["addmm"]  # full recomputation repeats the linears
    assert counts["save_matmuls"]["addmm"] == counts["none"]["addmm"]
    assert counts["save_matmuls"]["gelu"] == counts["all"]["gelu"] == 2 * counts["none"]["gelu"]


def test_wrap_model_checkpoints_trainable_networks_only():
    cfg = ParallelConfig(strategy="none", precision="fp32", activation_checkpointing="every_other")
    trained, frozen = tiny_dit(), tiny_dit()
    wrap_model(trained, trained.blocks, cfg, CPU)
    wrap_model(frozen, frozen.blocks, cfg, CPU, trainable=False)
    assert [isinstance(b, CheckpointedModule) for b in trained.blocks] == [True, False, True, False]
    assert not any(isinstance(m, CheckpointedModule) for m in frozen.modules())
    assert trained.state_dict().keys() == frozen.state_dict().keys()


def test_wrapping_twice_checkpoints_once():
    model = tiny_dit()
    apply_activation_checkpointing(model.blocks, "attention")
    apply_activation_checkpointing(model.blocks, "attention")
    assert type(model.blocks[0].self_attn).__mro__.count(CheckpointedModule) == 1
    calls = count_calls(model)
    loss_and_grads(model)
    assert calls["0.self_attn"] == 2


def test_unknown_mode_and_missing_attention_module_raise():
    with pytest.raises(ValueError, match="unknown activation checkpointing mode 'half'"):
        apply_activation_checkpointing(tiny_dit().blocks, "half")
    with pytest.raises(ValueError, match="no submodule 'attn1'"):
        apply_activation_checkpointing(tiny_dit().blocks, "attention", attention="attn1")


@pytest.mark.parametrize("mode", ["all", "every_other", "attention", "save_matmuls"])
def test_checkpointing_modes_trace_under_torch_compile(mode):
    """Per-block ``torch.compile`` over the wrapped blocks, as ``parallel.compile`` does (the
    ``aot_eager`` backend: Dynamo and AOTAutograd's partitioner without code generation), in one graph
    per block."""
    ref = loss_and_grads(tiny_dit())
    model = tiny_dit()
    apply_activation_checkpointing(model.blocks, mode)
    set_attention_backend(model.blocks, "math", CPU.device)
    for blk in model.blocks:
        blk.compile(backend="aot_eager", fullgraph=True, dynamic=False)
    assert_same(ref, loss_and_grads(model), 1e-5)


#: Graphs per-block ``torch.compile`` traces for 12 blocks (more than Dynamo's recompile limit of 8).
EXPECTED_GRAPHS = {"none": 1, "all": 1, "every_other": 2, "attention": 1, "save_matmuls": 1}


@pytest.mark.parametrize("mode", CHECKPOINTING_MODES)
def test_checkpointing_modes_compile_every_block_without_recompiling(mode):
    """All blocks share one compiled graph per wrapped class: nothing in a wrapped block may be a
    per-block object that Dynamo guards by identity, or each block recompiles the same code until
    ``recompile_limit`` and the blocks after it run eager."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = FlashHeadTransformer.from_config_dataclass(dataclasses.replace(TINY_DIT, num_layers=12)).float().train()
    apply_activation_checkpointing(model.blocks, mode)
    for blk in model.blocks:
        blk.compile(backend="aot_eager", dynamic=False)
    x, t, context, y, _ = dit_inputs()
    for _ in range(2):
        model(x, t, context, y).square().mean().backward()
    assert counters["stats"]["unique_graphs"] == EXPECTED_GRAPHS[mode]
    assert counters["frames"]["total"] == counters["frames"]["ok"] == EXPECTED_GRAPHS[mode]
    assert not counters["graph_break"]


def _train_two_steps(model: FlashHeadTransformer, dit: torch.nn.Module, rows: slice) -> None:
    opt = make_optimizer(list(model.parameters()), OptimConfig(lr=1e-3))
    g = torch.Generator().manual_seed(1)
    c = DIT4.out_dim
    x, y, target = (torch.randn(2, c, 3, 8, 8, generator=g) for _ in range(3))
    context = torch.randn(2, 9, DIT4.audio_window, DIT4.audio_layers, DIT4.audio_channels, generator=g)
    for _ in range(2):
        out = dit(x[rows], torch.tensor([300.0, 800.0])[rows], context[rows], y[rows])
        torch.nn.functional.mse_loss(out, target[rows]).backward()
        opt.step()
        opt.zero_grad()


def _fsdp_checkpointing_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from pathlib import Path

    from gloo_ranks import finish_rank, init_rank
    from torch.distributed.device_mesh import init_device_mesh

    from vividhead.training.trainers.checkpoint import full_state_dict

    init_rank(rank, world, port)
    mode = (Path(out_dir) / "mode").read_text()
    env = DistEnv(rank, world, rank, torch.device("cpu"), init_device_mesh("cpu", (world,)))
    model = tiny_dit()
    dit = wrap_model(model, model.blocks, ParallelConfig(strategy="fsdp", precision="fp32",
                                                         activation_checkpointing=mode), env)
    _train_two_steps(model, dit, slice(rank, rank + 1))
    sd = full_state_dict(model)
    if rank == 0:
        torch.save(sd, Path(out_dir) / "two.pt")
    finish_rank()


@pytest.mark.parametrize("mode", ["every_other", "attention", "save_matmuls"])
def test_fsdp2_over_two_ranks_with_selective_checkpointing_matches_one_process(tmp_path, mode):
    from gloo_ranks import spawn_ranks

    model = tiny_dit()
    _train_two_steps(model, model, slice(0, 2))
    (tmp_path / "mode").write_text(mode)
    spawn_ranks(_fsdp_checkpointing_worker, 2, tmp_path)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    worst = max((v.detach() - two[k]).abs().max().item() for k, v in model.state_dict().items())
    # FSDP2 averages the ranks' gradients: the mean loss over both samples. Two Adam steps at lr 1e-3
    # move weights by ~2e-3; a batch of 2 against two of 1 sums in another order, which Adam's
    # normalisation lifts to 3e-5 on some machines, so the bound sits between that and a lost gradient.
    assert worst < 2e-4, worst


# -- attention backend ----------------------------------------------------------------------------------
def sdpa_kernels(model: torch.nn.Module) -> set[str]:
    from torch.profiler import profile

    with profile() as prof:
        loss_and_grads(model)
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


def test_math_backend_matches_auto_and_runs_the_math_kernel():
    auto = tiny_dit()
    assert set_attention_backend(auto.blocks, "auto", CPU.device) == 0
    ref = loss_and_grads(auto)
    model = tiny_dit()
    assert set_attention_backend(model.blocks, "math", CPU.device) == 8  # self- and cross-attention of 4 blocks
    assert_same(ref, loss_and_grads(model), 1e-5)
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in sdpa_kernels(tiny_dit())
    kernels = sdpa_kernels(model)
    assert "aten::_scaled_dot_product_attention_math" in kernels
    assert not any("flash" in k for k in kernels), kernels


def test_backend_also_holds_in_the_recomputation_of_a_checkpointed_attention():
    cfg = ParallelConfig(strategy="none", precision="fp32", activation_checkpointing="attention",
                         attention_backend="math")
    model = tiny_dit()
    wrap_model(model, model.blocks, cfg, CPU)
    kernels = sdpa_kernels(model)
    assert "aten::_scaled_dot_product_attention_math" in kernels
    assert not any("flash" in k for k in kernels), kernels


@pytest.mark.parametrize("backend", ["cudnn", "efficient"])
def test_cuda_only_backends_are_refused_on_the_cpu(backend):
    model = tiny_dit()
    cfg = ParallelConfig(strategy="none", precision="fp32", attention_backend=backend)
    with pytest.raises(ConfigError, match=rf"^parallel\.attention_backend: {backend} needs CUDA"):
        wrap_model(model, model.blocks, cfg, CPU)


# -- optimiser and EMA ----------------------------------------------------------------------------------
def test_adamw_is_fused_on_cuda_and_left_to_torch_elsewhere():
    params = [torch.nn.Parameter(torch.randn(3))]
    assert make_optimizer(params, OptimConfig(), device=torch.device("cuda")).defaults["fused"] is True
    assert make_optimizer(params, OptimConfig(), device=torch.device("cpu")).defaults["fused"] is None


def previous_ema_update(shadow: dict[str, torch.Tensor], params: dict[str, torch.Tensor], decay: float) -> None:
    """The EMA update as it was before the parameter lists were kept (the reference)."""
    names = list(shadow)
    torch._foreach_lerp_([shadow[n] for n in names], [params[n].detach().float() for n in names], 1.0 - decay)


def test_ema_values_are_unchanged_and_one_foreach_op_per_update():
    model = tiny_dit()
    ema = EMA(model, 0.9)
    ref = {n: t.clone() for n, t in ema.shadow.items()}
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        loss_and_grads(model)
        opt.step()
        opt.zero_grad()
        with CountOps() as c:
            ema.update()
        assert dict(c.ops) == {"_foreach_lerp_": 1}, c.ops  # no per-parameter op
        before = {n: t.clone() for n, t in ref.items()}
        previous_ema_update(ref, params, 0.9)
        for n, t in ema.shadow.items():
            assert torch.equal(t, ref[n]), (step, n)
            torch.testing.assert_close(t, 0.9 * before[n] + 0.1 * params[n].detach(), rtol=1e-6, atol=1e-7)
    assert len(ema.shadow) == sum(p.requires_grad for p in model.parameters())


def test_ema_shadow_loaded_in_place_is_what_the_next_update_reads():
    model = tiny_dit()
    ema = EMA(model, 0.5)
    for t in ema.shadow.values():  # what load_checkpoint does: copy into the shadow tensors
        t.copy_(torch.zeros_like(t))
    ema.update()
    for n, p in model.named_parameters():
        if n in ema.shadow:
            torch.testing.assert_close(ema.shadow[n], 0.5 * p.detach())


def test_ema_of_a_bf16_parameter_is_kept_in_float32():
    module = torch.nn.Linear(4, 4).to(torch.bfloat16)
    ema = EMA(module, 0.9)
    start = module.weight.float().clone()
    with torch.no_grad():
        module.weight.add_(1.0)
    ema.update()
    assert ema.shadow["weight"].dtype == torch.float32
    torch.testing.assert_close(ema.shadow["weight"], 0.9 * start + 0.1 * module.weight.float())



# -- the frozen VAE (parallel.fast_vae) -------------------------------------------------------------------
#: The tiny Pro model of ``examples/sft_tiny_cpu.yaml``: Wan layout, few-channel random VAE.
TINY_PRO_MODEL = ModelConfig(variant="pro", tiny_encoders=True, height_px=32, width_px=32)


def tiny_encoders(parallel: ParallelConfig | None, model: ModelConfig = TINY_PRO_MODEL):
    from vividhead.training.trainers.models import build_encoders, resolve_variant

    return build_encoders(model, resolve_variant(model), torch.device("cpu"), torch.float32, parallel)


def test_frozen_wan_vae_is_accelerated_when_fast_vae_is_on_and_computes_the_same():
    """``parallel.fast_vae: true``: the trainers' frozen Wan VAE runs inference's accelerated code on
    the CPU too (channels-last, one-pass decode / encode; nothing compiled); ``auto`` (default) on the
    CPU, ``false``, and the export's encoders (``parallel=None``): the stock diffusers VAE. Same seed,
    same weights: float32 decode and encode of the accelerated VAE equal stock (the per-shape proof
    is ``tests/inference/test_wan_vae_fast.py``)."""
    from vividhead.models.wan_vae_fast import _decode_one_pass

    fast = tiny_encoders(ParallelConfig(fast_vae=True))
    off = tiny_encoders(ParallelConfig(fast_vae=False))
    auto = tiny_encoders(ParallelConfig())
    export = tiny_encoders(None)
    assert fast.vae_speedup == "wan-accelerated"
    assert fast.vae.memory_format == torch.channels_last_3d
    assert vars(fast.vae.model)["_decode"].__func__ is _decode_one_pass
    for stock in (off, auto, export):
        assert stock.vae_speedup is None and stock.vae.memory_format == torch.contiguous_format
        assert "_decode" not in vars(stock.vae.model) and "_encode" not in vars(stock.vae.model)
    z = torch.randn(1, fast.vae.latent_channels, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.testing.assert_close(fast.vae.decode(z), off.vae.decode(z), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.vae.encode(video), off.vae.encode(video), rtol=1e-5, atol=1e-5)


def test_on_cuda_the_frozen_vae_compiles_with_the_configured_mode(monkeypatch):
    """On CUDA (``auto``, the default) the Wan coders are compiled in ``parallel.vae_compile``'s mode
    (``None``: the fused norms only) and an LTX VAE's decode and moments are compiled; on the CPU an
    LTX VAE is left as it is even with ``fast_vae: true``. ``torch.compile`` is recorded, not run (no
    GPU here); the VAEs stay on the CPU."""
    from vividhead.models.vae import build_vae
    from vividhead.training.trainers.models import speed_up_vae

    calls = []

    def fake_compile(fn=None, **kwargs):
        calls.append(kwargs.get("mode", "?"))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    cuda = torch.device("cuda")
    wan = build_vae("wan", tiny=True)
    assert speed_up_vae(wan, cuda, ParallelConfig()) == "wan-accelerated+compiled (default)"
    assert calls == [None, None]  # decoder and encoder, mode "default" is torch.compile's None
    calls.clear()
    wan = build_vae("wan", tiny=True)
    assert speed_up_vae(wan, cuda, ParallelConfig(vae_compile="max-autotune-no-cudagraphs")).endswith(
        "(max-autotune-no-cudagraphs)")
    assert calls == ["max-autotune-no-cudagraphs"] * 2
    calls.clear()
    assert speed_up_vae(build_vae("wan", tiny=True), cuda, ParallelConfig(vae_compile=None)) == "wan-accelerated"
    assert calls == ["?"]  # the fused norm + SiLU only
    calls.clear()
    assert speed_up_vae(build_vae("wan", tiny=True), cuda, ParallelConfig(fast_vae=False)) is None
    assert calls == []
    ltx = build_vae("ltx", tiny=True)
    assert speed_up_vae(ltx, torch.device("cpu"), ParallelConfig(fast_vae=True)) is None
    assert "decode" not in vars(ltx) and calls == []
    assert speed_up_vae(ltx, cuda, ParallelConfig()) == "ltx-compiled"
    assert "decode" in vars(ltx) and "encode_moments" in vars(ltx) and len(calls) == 2


def test_expandable_segments_are_asked_for_unless_the_user_set_the_allocator(monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    use_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    use_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"
