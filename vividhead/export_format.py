"""The export format: the folder ``vividhead train export`` writes and ``infer --checkpoint``,
``serve``, ``eval run`` and ``train distill`` (``distill.init_checkpoint``) read.

This module is the one home of the format, as :mod:`vividhead.shard_format` is of the shards: the
folder layout, the metadata file, one writer (:func:`write_export_folder`) and one reader
(:func:`read_export`, which parses the metadata into :class:`ExportInfo`). Training
(``training/trainers/export.py``, ``models.py``, ``distill.py``) and inference
(``inference/pipeline.py``, ``inference/cli.py``) import it; nothing else restates these names.

Layout (version :data:`FORMAT_VERSION`)::

    EXPORT/
        vividhead_export.json   (METADATA_FILE) the metadata below
        transformer/            (TRANSFORMER_DIR) diffusers format: config.json +
                                diffusion_pytorch_model.safetensors (the released FlashHead key layout)
        vae/                    (VAE_DIR) the frozen VAE, diffusers format; its config.json is the
                                VAE config (``ExportInfo.vae_config``)
        audio_encoder/          (AUDIO_ENCODER_DIR) the frozen Wav2Vec 2.0, transformers format
        lora/                   (LORA_DIR, only with ``lora.dir``) LoRA adapters kept apart from
                                ``transformer/`` (the base): peft's ``save_pretrained`` layout

Metadata (a JSON object): ``format`` (the version, an int), ``variant`` (name), ``vae`` (the VAE
kind, ``wan`` / ``ltx``), ``transformer`` and ``streaming`` (the
:class:`~vividhead.models.configs.FlashHeadTransformerConfig` / ``StreamingConfig`` fields),
``weights`` (``ema`` / ``raw``), ``step``, ``source`` (the checkpoint folder) and ``kind`` (the
trainer, ``sft`` / ``distill`` / ``finetune``; absent in exports written before it was recorded),
and, for a LoRA fine-tune, ``lora``: the adapter settings (``rank``, ``alpha``, ``dropout``,
``targets``), ``merged`` (true: folded into ``transformer/``, nothing else to apply) and, when kept
apart, ``dir`` (``lora``: the adapter folder a reader must apply over ``transformer/``).

Versions: a reader reads the versions in :data:`READ_VERSIONS`; another version fails with
:class:`ExportFormatError` naming both. Exports carry ``"format": 1`` (:data:`FORMAT_VERSION`), merged
LoRA fine-tunes included; an export whose adapters are kept apart (``lora.dir``) carries ``"format":
2`` (:data:`ADAPTER_FORMAT_VERSION`), so a reader from before adapters refuses it instead of loading
the base alone. A metadata file without the field is read as version 1 (trivially safe: version 1
was the only version then, and its fields are the ones the reader needs).

There is no separate ``vae_config`` key: ``vae/config.json`` (written by diffusers'
``save_pretrained``) is the VAE's config, and :func:`vividhead.models.vae.load_vae` reads it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from vividhead.errors import UserError

#: Version of the layout and metadata below; bump it on any change a reader of the old version
#: would misread.
FORMAT_VERSION: int = 1
#: Version of an export whose LoRA adapters are kept apart (``lora/``): a version-1 reader would
#: load the base alone, so it must refuse the folder.
ADAPTER_FORMAT_VERSION: int = 2
#: The versions this reader reads.
READ_VERSIONS: tuple[int, ...] = (FORMAT_VERSION, ADAPTER_FORMAT_VERSION)
#: The metadata file; it marks a folder as an export.
METADATA_FILE = "vividhead_export.json"
#: The DiT, diffusers format.
TRANSFORMER_DIR = "transformer"
#: The frozen VAE, diffusers format.
VAE_DIR = "vae"
#: The frozen Wav2Vec 2.0, transformers format.
AUDIO_ENCODER_DIR = "audio_encoder"
#: LoRA adapters kept apart from the base DiT (peft's ``save_pretrained`` layout).
LORA_DIR = "lora"


class ExportFormatError(UserError):
    """Not an export folder, unreadable metadata, or an export of another format version (one line)."""


@dataclass(frozen=True)
class ExportInfo:
    """An export folder's metadata, parsed.

    Attributes:
        path: the export folder.
        version: the metadata's format version (:data:`FORMAT_VERSION`).
        variant: the :class:`~vividhead.models.configs.FlashHeadVariant` it was trained as (shapes,
            streaming geometry, VAE kind).
        kind: the trainer that wrote the weights (``sft`` / ``distill``), None when not recorded.
        weights: ``ema`` or ``raw``.
        step: optimiser steps of the source checkpoint.
        source: the checkpoint folder it was exported from.
        vae_config: the VAE's diffusers config (``vae/config.json``), None without one.
        lora: the LoRA settings of a fine-tune (``rank``, ``alpha``, ``dropout``, ``targets``,
            ``merged``, and ``dir`` when kept apart), None for other exports.
    """

    path: Path
    version: int
    variant: Any  # FlashHeadVariant (imported lazily: this module stays light)
    kind: Optional[str]
    weights: Optional[str]
    step: Optional[int]
    source: Optional[str]
    vae_config: Optional[dict]
    lora: Optional[dict] = None

    @property
    def transformer_dir(self) -> Path:
        return self.path / TRANSFORMER_DIR

    @property
    def vae_dir(self) -> Path:
        return self.path / VAE_DIR

    @property
    def audio_encoder_dir(self) -> Path:
        return self.path / AUDIO_ENCODER_DIR

    @property
    def lora_dir(self) -> Optional[Path]:
        """The adapter folder to apply over ``transformer/`` (None: nothing to apply)."""
        if not self.lora or self.lora.get("merged", True) or not self.lora.get("dir"):
            return None
        return self.path / self.lora["dir"]


def is_export(path: str | Path) -> bool:
    """True when ``path`` is a folder with the metadata file."""
    return (Path(path) / METADATA_FILE).is_file()


def write_export_folder(out: str | Path, transformer, vae, audio_encoder, variant, *, weights: str, step: int,
                        source: str, kind: Optional[str] = None, lora: Optional[dict] = None,
                        adapters=None) -> Path:
    """Write an export folder atomically (``OUT.tmp``, then rename over ``OUT``).

    Args:
        out: the target folder (replaced if it exists).
        transformer, vae, audio_encoder: modules with ``save_pretrained(folder, safe_serialization=True)``
            (the DiT, the diffusers VAE, the transformers Wav2Vec), already on the CPU.
        variant: the :class:`~vividhead.models.configs.FlashHeadVariant` the DiT was trained as.
        weights: ``ema`` or ``raw``; step: optimiser steps; source: the checkpoint folder;
        kind: the trainer (``sft`` / ``distill`` / ``finetune``).
        lora: the LoRA settings of a fine-tune, recorded as metadata ``lora`` (with ``merged``).
        adapters: a ``peft.PeftModel`` whose adapters are kept apart: saved to ``lora/`` with
            ``save_pretrained``, ``transformer`` then being the base; the folder is version
            :data:`ADAPTER_FORMAT_VERSION`. None: ``transformer`` holds every weight (merged).

    Returns:
        the export folder.
    """
    from vividhead.config import to_dict

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    transformer.save_pretrained(tmp / TRANSFORMER_DIR, safe_serialization=True)
    vae.save_pretrained(tmp / VAE_DIR, safe_serialization=True)
    audio_encoder.save_pretrained(tmp / AUDIO_ENCODER_DIR, safe_serialization=True)
    if adapters is not None:
        adapters.save_pretrained(tmp / LORA_DIR, safe_serialization=True)
    meta = {
        "format": FORMAT_VERSION if adapters is None else ADAPTER_FORMAT_VERSION,
        "variant": variant.name,
        "vae": variant.vae.value,
        "transformer": to_dict(variant.transformer),
        "streaming": to_dict(variant.streaming),
        "weights": weights,
        "step": step,
        "source": str(source),
    }
    if kind is not None:
        meta["kind"] = kind
    if lora is not None or adapters is not None:
        meta["lora"] = {**(lora or {}), "merged": adapters is None}
        if adapters is not None:
            meta["lora"]["dir"] = LORA_DIR
    (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def read_export(path: str | Path) -> ExportInfo:
    """Parse an export folder's metadata (the only parser of it).

    Raises:
        ExportFormatError: no metadata file, unreadable or incomplete metadata, or a ``format``
            other than :data:`FORMAT_VERSION` (the message names both versions).
    """
    from vividhead.models.configs import (
        FlashHeadTransformerConfig,
        FlashHeadVariant,
        StreamingConfig,
        VAEKind,
        get_variant,
    )

    root = Path(path)
    p = root / METADATA_FILE
    if not p.is_file():
        raise ExportFormatError(f"{root} is not a vividhead export (no {METADATA_FILE})")
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ExportFormatError(f"{p}: unreadable export metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise ExportFormatError(f"{p}: export metadata must be a JSON object")
    version = meta.get("format", 1)  # missing: version 1, the only version written before the field was checked
    if version not in READ_VERSIONS:
        raise ExportFormatError(f"{root}: export format version {version}, this vividhead reads version "
                                f"{' or '.join(map(str, READ_VERSIONS))} (re-export the checkpoint with "
                                "`vividhead train export`)")
    try:
        tcfg = FlashHeadTransformerConfig(**_tuples(meta["transformer"]))
        scfg = StreamingConfig(**_tuples(meta["streaming"]))
        vae_kind = VAEKind(meta["vae"])
        name = meta["variant"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportFormatError(f"{p}: bad export metadata ({type(exc).__name__}: {exc})") from exc
    try:
        base = get_variant(name)
    except ValueError:  # a variant defined outside VARIANTS: the folder describes it fully
        variant = FlashHeadVariant(name, tcfg, scfg, vae_kind)
    else:
        variant = dataclasses.replace(base, transformer=tcfg, streaming=scfg, vae=vae_kind)
    vae_json = root / VAE_DIR / "config.json"
    vae_config = json.loads(vae_json.read_text()) if vae_json.is_file() else None
    return ExportInfo(path=root, version=version, variant=variant, kind=meta.get("kind"),
                      weights=meta.get("weights"), step=meta.get("step"), source=meta.get("source"),
                      vae_config=vae_config, lora=meta.get("lora"))


__all__ = [
    "ADAPTER_FORMAT_VERSION",
    "AUDIO_ENCODER_DIR",
    "FORMAT_VERSION",
    "LORA_DIR",
    "METADATA_FILE",
    "READ_VERSIONS",
    "TRANSFORMER_DIR",
    "VAE_DIR",
    "ExportFormatError",
    "ExportInfo",
    "is_export",
    "read_export",
    "write_export_folder",
]
