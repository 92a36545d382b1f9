"""Checkpoint reading and mapping for the FlashHead DiT and the video VAEs.

* :func:`load_state_dict_file`, :func:`read_config_json`, :func:`load_strict`: file reading and
  strict loading, shared by the DiT loaders here and ``vividhead.models.vae.load_vae``.
* :func:`load_flashhead_transformer`: a FlashHead checkpoint in the released layout
  (``Soul-AILab/SoulX-FlashHead`` ``Model_Pro`` / ``Model_Lite``: ``config.json`` + weights, the
  original-Wan key names listed at the top of ``flashhead.py``), loaded strictly.
* :func:`flashhead_from_wan_t2v`: a FlashHead DiT initialised from a released Wan2.1-T2V backbone in
  diffusers' ``WanTransformer3DModel`` layout (``Wan-AI/Wan2.1-T2V-{1.3B,14B}-Diffusers``, folder
  ``transformer/``), or in the original Wan layout (converted with diffusers' own
  ``convert_wan_transformer_to_diffusers`` first). Stage-1 training starts here (FlashHead report
  §3.2: the DiT is initialised from Wan2.1; the audio adapter is new).

Key mapping diffusers -> FlashHead (= original Wan2.1), per block ``i`` (names from diffusers
0.42 ``models/transformers/transformer_wan.py`` and its inverse, ``convert_wan_transformer_to_diffusers``
in ``loaders/single_file_utils.py``)::

    blocks.i.attn1.to_{q,k,v}, attn1.to_out.0      -> blocks.i.self_attn.{q,k,v,o}
    blocks.i.attn1.norm_{q,k}                      -> blocks.i.self_attn.norm_{q,k}   (RMS, across heads)
    blocks.i.attn2.*                               -> blocks.i.cross_attn.*           (text -> audio)
    blocks.i.norm2 (affine LayerNorm before attn2) -> blocks.i.norm3
    blocks.i.ffn.net.0.proj, ffn.net.2             -> blocks.i.ffn.0, ffn.2
    blocks.i.scale_shift_table                     -> blocks.i.modulation
    condition_embedder.time_embedder.linear_{1,2}  -> time_embedding.{0,2}
    condition_embedder.time_proj                   -> time_projection.1
    condition_embedder.text_embedder.linear_{1,2}  -> text_embedding.{0,2}
    proj_out, scale_shift_table                    -> head.head, head.modulation
    patch_embedding                                -> patch_embedding (widened, see below)

diffusers' ``norm1`` / ``norm3`` (before self-attention / FFN) and ``norm_out`` are affine-free and
have no keys; ``rope`` holds non-persistent buffers only.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from vividhead.models.configs import FlashHeadTransformerConfig
from vividhead.models.flashhead import FlashHeadTransformer

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# File reading and strict loading (DiT and VAE)
# ----------------------------------------------------------------------------------------------


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` (preferred), a sharded safetensors index, or a torch
    file (``torch.load(weights_only=True)``, unwrapping a ``state_dict`` / ``model`` / ``module``
    entry); a directory is searched for these in that order.

    Args:
        path: a file, or a folder holding one checkpoint (a ``*.safetensors.index.json`` with its
            shards, a single ``*.safetensors``, or a ``*.pth`` / ``*.pt`` / ``*.bin``).

    Returns:
        name -> tensor on the CPU, in the stored dtypes.

    Raises:
        FileNotFoundError: nothing loadable at ``path``, or several safetensors files and no index.
    """
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        index = sorted(p.glob("*.safetensors.index.json"))
        single = sorted(p.glob("*.safetensors"))
        torch_files = sorted([*p.glob("*.pth"), *p.glob("*.pt"), *p.glob("*.bin")])
        if index:
            p = index[0]
        elif single:
            if len(single) > 1:
                raise FileNotFoundError(f"several safetensors files in {p} and no index: {single}")
            p = single[0]
        elif torch_files:
            p = torch_files[0]
        else:
            raise FileNotFoundError(f"no checkpoint file in {path}")
    if not p.exists():
        raise FileNotFoundError(p)
    if p.name.endswith(".safetensors.index.json"):
        shards = sorted(set(json.loads(p.read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            sd.update(load_file(str(p.parent / shard)))
        return sd
    if p.suffix == ".safetensors":
        return load_file(str(p))
    obj = torch.load(str(p), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    return obj


def read_config_json(path: str | Path) -> dict | None:
    """The ``config.json`` beside a checkpoint: ``path/config.json`` for a folder, the file's sibling
    otherwise; ``None`` when there is none.

    Returns:
        the parsed JSON object, all keys kept (diffusers' ``_class_name`` etc. included).
    """
    p = Path(path)
    cfg = p / "config.json" if p.is_dir() else p.parent / "config.json"
    return json.loads(cfg.read_text()) if cfg.is_file() else None


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with a readable error; tensors are copied
    (and cast) into the model's existing parameters.

    Raises:
        KeyError: listing up to 20 missing and unexpected keys.
        RuntimeError: shape mismatches (from PyTorch).
    """
    expected = set(model.state_dict())
    got = set(state_dict)
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise KeyError(
            f"checkpoint keys do not match {type(model).__name__}: "
            f"{len(missing)} missing {missing[:20]}, {len(unexpected)} unexpected {unexpected[:20]}"
        )
    model.load_state_dict(state_dict, strict=True)


def _constructor_kwargs(cls: type, raw: dict, source: Path) -> dict:
    """``raw`` config keys that ``cls.__init__`` takes (``_``-keys dropped; others logged, dropped)."""
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    cfg = {k: v for k, v in raw.items() if not k.startswith("_")}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        logger.warning("ignoring config keys %s from %s", unknown, source)
    return {k: v for k, v in cfg.items() if k in allowed}


# ----------------------------------------------------------------------------------------------
# FlashHead checkpoints (released layout)
# ----------------------------------------------------------------------------------------------


def load_flashhead_transformer(
    path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"
) -> FlashHeadTransformer:
    """Load a FlashHead DiT from an upstream-layout folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``, or any checkpoint :func:`load_state_dict_file` reads)
    with strict key matching. The key set of the released Pro / Lite checkpoints is pinned by
    ``shared/fixtures/reference/flashhead_official_state_dict.json`` (tested).

    ``config.json`` keys that the constructor does not take are logged and ignored (the upstream
    constructor takes ``**kwargs`` too); any effect they could have on shapes is caught by the
    strict key/shape check of the weights.

    Args:
        path: the folder.
        dtype, device: of the returned model.

    Returns:
        the model in eval mode with ``requires_grad`` off (inference); call ``.train()`` and
        ``.requires_grad_(True)`` to fine-tune.

    Raises:
        FileNotFoundError: no ``config.json`` / weights.
        KeyError: checkpoint keys differ from the module tree.
        RuntimeError: a tensor's shape differs from the module's.
    """
    p = Path(path)
    raw = read_config_json(p) if p.is_dir() else None
    if raw is None:
        raise FileNotFoundError(p / "config.json")
    cfg = _constructor_kwargs(FlashHeadTransformer, raw, p / "config.json")
    with torch.device("meta"):
        model = FlashHeadTransformer(**cfg)
    sd = load_state_dict_file(p)
    model = model.to_empty(device="cpu")
    load_strict(model, sd)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# Wan2.1-T2V (diffusers layout) -> FlashHead
# ----------------------------------------------------------------------------------------------
_WAN_BLOCK_MAP = {
    **{f"attn{a}.to_{p}": f"{m}.{p}" for a, m in ((1, "self_attn"), (2, "cross_attn")) for p in "qkv"},
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_out.0": "cross_attn.o",
    "norm2": "norm3",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
_WAN_TOP_MAP = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "proj_out": "head.head",
    "patch_embedding": "patch_embedding",
}
# FlashHead parameters with no Wan2.1-T2V counterpart: freshly initialised
FRESH_PREFIXES = ("audio_proj.", "audio_emb.")


def wan_t2v_key_map(num_layers: int) -> dict[str, str]:
    """Every key of a diffusers ``WanTransformer3DModel`` (Wan2.1-T2V: no image branch, cross-attention
    norm on) -> its FlashHead key (table in the module docstring).

    Args:
        num_layers: transformer blocks.

    Returns:
        ``{diffusers_key: flashhead_key}``, ``27 * num_layers + 15`` entries (825 for 1.3B's 30; with the 18
        fresh audio-adapter keys, the 843 of a released FlashHead checkpoint).
    """
    out: dict[str, str] = {}
    for src, dst in _WAN_TOP_MAP.items():
        out |= {f"{src}.weight": f"{dst}.weight", f"{src}.bias": f"{dst}.bias"}
    out["scale_shift_table"] = "head.modulation"
    for i in range(num_layers):
        pre = f"blocks.{i}"
        for src, dst in _WAN_BLOCK_MAP.items():
            out |= {f"{pre}.{src}.weight": f"{pre}.{dst}.weight", f"{pre}.{src}.bias": f"{pre}.{dst}.bias"}
        for a, m in ((1, "self_attn"), (2, "cross_attn")):
            out |= {f"{pre}.attn{a}.norm_{n}.weight": f"{pre}.{m}.norm_{n}.weight" for n in "qk"}
        out[f"{pre}.scale_shift_table"] = f"{pre}.modulation"
    return out


def check_wan_t2v_config(raw: dict, config: FlashHeadTransformerConfig) -> None:
    """Check a Wan2.1-T2V ``config.json`` -- diffusers' ``WanTransformer3DModel`` or the original
    ``WanModel`` -- against the FlashHead config it initialises (what the weights' shapes cannot
    tell, like the head count, is checked here). Keys absent from ``raw`` are not checked.

    Raises:
        ValueError: listing every mismatch (an I2V / VACE / Wan2.2 config, other sizes, another class).
    """
    cls = raw.get("_class_name")
    if cls == "WanModel":  # original layout (Wan-AI/Wan2.1-T2V-*/config.json)
        want = {
            "model_type": "t2v", "dim": config.dim, "num_heads": config.num_heads, "in_dim": config.out_dim,
            "out_dim": config.out_dim, "ffn_dim": config.ffn_dim, "num_layers": config.num_layers,
            "freq_dim": config.freq_dim, "text_dim": config.text_dim, "patch_size": list(config.patch_size),
            "eps": config.eps, "cross_attn_norm": True, "qk_norm": True,
        }
    elif cls == "WanTransformer3DModel":
        want = {
            "num_attention_heads": config.num_heads, "attention_head_dim": config.dim // config.num_heads,
            "in_channels": config.out_dim, "out_channels": config.out_dim, "ffn_dim": config.ffn_dim,
            "num_layers": config.num_layers, "freq_dim": config.freq_dim, "text_dim": config.text_dim,
            "patch_size": list(config.patch_size), "eps": config.eps, "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads", "image_dim": None, "added_kv_proj_dim": None,
            "pos_embed_seq_len": None,
        }
    else:
        raise ValueError(f"config.json of class {cls!r}: want 'WanTransformer3DModel' or 'WanModel'")
    bad = []
    for k, v in want.items():
        got = raw.get(k, v)
        if isinstance(got, tuple):
            got = list(got)
        if got != v:
            bad.append(f"{k}={got!r} (want {v!r})")
    if bad:
        raise ValueError(f"{cls} config does not fit this FlashHead config: " + ", ".join(bad))


def _read_wan_t2v(path: Path, config: FlashHeadTransformerConfig) -> dict[str, torch.Tensor]:
    """State dict of a diffusers pipeline folder (``transformer/`` inside), transformer folder or file."""
    if path.is_dir() and (path / "transformer").is_dir():
        path = path / "transformer"
    raw = read_config_json(path)
    if raw is not None:
        check_wan_t2v_config(raw, config)
    return load_state_dict_file(path)


def _to_diffusers_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original-layout Wan2.1 state dict (``blocks.0.self_attn.q.weight``, optionally under
    ``model.diffusion_model.``) -> diffusers names, with diffusers' own converter; others unchanged."""
    if not any(k.endswith("self_attn.q.weight") for k in sd):
        return sd
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(sd))


def flashhead_from_wan_t2v(
    path_or_state_dict: str | Path | Mapping[str, torch.Tensor],
    config: FlashHeadTransformerConfig,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> FlashHeadTransformer:
    """A FlashHead DiT initialised from a released Wan2.1-T2V backbone (stage-1 initialisation).

    Every backbone key is mapped (:func:`wan_t2v_key_map`), strictly; then:

    * the patch embedding is widened from ``C`` to ``2C`` input channels for the reference latent
      that the FlashHead forward concatenates after the noisy one (``cat([x, y])``): the first ``C``
      input channels are Wan's, the new ``C`` are zero, so at init the model ignores ``y``;
    * the blocks' cross-attention (diffusers ``attn2``, Wan's text cross-attention, with its affine
      ``norm2`` -> ``norm3``) is kept and takes the audio tokens instead of the text tokens;
    * ``audio_proj.*`` and ``audio_emb.*`` are freshly initialised (PyTorch's default ``Linear`` /
      ``LayerNorm`` init, from torch's global RNG: seed before calling for reproducible weights);
    * ``text_embedding.*`` gets Wan's text projection (FlashHead never calls it; kept so the result
      has the released FlashHead key set).

    Verified (``tests/vividhead/models/test_loading.py``, CPU, float32, a tiny randomly initialised
    diffusers ``WanTransformer3DModel`` with the tiny FlashHead config's sizes: 2 layers, dim 32,
    2 heads, patch 1x2x2): every key mapped and nothing left (a missing or extra key raises); the
    mapping agrees with diffusers' own original->diffusers converter; one block (self-attention,
    cross-attention on the same context tokens in every latent frame, FFN) equals diffusers' block
    to 1e-5; the full forward with the cross-attention's output projection zeroed in both equals
    diffusers' forward to 1e-5 (measured: bit for bit) when diffusers' timestep sinusoid is computed
    in float64 like FlashHead's (Wan2.1's ``sinusoidal_embedding_1d``). Unpatched, diffusers'
    ``Timesteps`` computes the angles ``t * 10000^(-i/half)`` in float32 (``get_timestep_embedding``),
    an absolute angle error up to ~1e-4 rad at t ~ 1000; that alone moves the tiny model's output by
    3.4e-5 at t = 937.5 (outputs of magnitude ~4; at t = 0 both agree exactly). This is diffusers' port deviating from the original Wan code, not a
    mapping error. RoPE needs no patch: diffusers' ``WanRotaryPosEmbed`` (float64 tables, t/h/w split
    ``d - 4(d//6)`` / ``2(d//6)`` / ``2(d//6)``, interleaved pairs) equals ``rope_freqs_3d``. The real
    1.3B / 14B files were not available offline here, so the released files themselves are untested:
    the config check (:func:`check_wan_t2v_config`) and the strict key/shape checks are what guard
    them.

    Memory: the source state dict and the float32 model are held on the CPU together (about 2 x 5.7
    GB for 1.3B, 2 x 57 GB for 14B in float32).

    Args:
        path_or_state_dict: a diffusers pipeline folder (``transformer/`` is used), a transformer
            folder (``config.json`` checked when present; sharded safetensors read via the index), a
            checkpoint file, or a state dict already in memory (diffusers or original Wan layout; no
            config to check then: a head count that differs from ``config.num_heads`` cannot be
            detected from the weights).
        config: the FlashHead sizes; ``in_dim = 2 * out_dim``, the rest must equal the backbone's.
        dtype, device: of the returned model (float32 master weights by default).

    Returns:
        the model in train mode with gradients on.

    Raises:
        FileNotFoundError: nothing to read at the path.
        KeyError: backbone keys missing from, or left over in, the checkpoint (both listed).
        ValueError: a ``config.json`` or a tensor shape that does not fit ``config`` (e.g. the Lite
            config: LTX latents of 128 channels and patch 1x1x1 do not fit Wan's 16-channel 1x2x2
            patch embedding and head).
    """
    if isinstance(path_or_state_dict, Mapping):
        src = dict(path_or_state_dict)
    else:
        src = _read_wan_t2v(Path(path_or_state_dict), config)
    src = _to_diffusers_layout(src)
    key_map = wan_t2v_key_map(config.num_layers)
    missing, leftover = sorted(set(key_map) - set(src)), sorted(set(src) - set(key_map))
    if missing or leftover:
        raise KeyError(
            f"Wan2.1-T2V checkpoint does not match a {config.num_layers}-layer backbone: "
            f"{len(missing)} missing {missing[:20]}, {len(leftover)} left over {leftover[:20]}"
        )

    with torch.device("meta"):
        model = FlashHeadTransformer.from_config_dataclass(config)
    model = model.to_empty(device="cpu")
    target = model.state_dict()
    sd: dict[str, torch.Tensor] = {}
    for s_key, d_key in key_map.items():
        w, want = src[s_key], target[d_key].shape
        if d_key == "patch_embedding.weight":
            if w.ndim != 5 or (w.shape[0], 2 * w.shape[1], *w.shape[2:]) != tuple(want):
                raise ValueError(f"{s_key} {tuple(w.shape)} cannot widen to {tuple(want)}")
            wide = torch.zeros(want, dtype=w.dtype)
            wide[:, : w.shape[1]] = w  # noisy-latent channels; the reference-latent ones stay zero
            w = wide
        elif w.shape != want:
            raise ValueError(f"{s_key} {tuple(w.shape)} does not fit {d_key} {tuple(want)}")
        sd[d_key] = w
    for name, module in model.named_children():
        if f"{name}." in FRESH_PREFIXES:
            for sub in module.modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
    sd |= {k: v for k, v in model.state_dict().items() if k.startswith(FRESH_PREFIXES)}
    load_strict(model, sd)
    return model.to(device=device, dtype=dtype).train().requires_grad_(True)
