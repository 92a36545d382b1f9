"""Where ``vividhead infer`` / ``serve`` find their weights: a local folder or a Hugging Face Hub id,
through the weights registry (:mod:`vividhead.weights`).

A *source* is one of

* a local folder (used as it is; works with ``VIVIDHEAD_OFFLINE=1``);
* a Hub id ``owner/name``, ``owner/name@revision`` or ``hf://owner/name[@revision]``: looked up in
  ``$VIVIDHEAD_WEIGHTS_DIR`` and the vividhead cache (for registry entries, under the entry's
  folder name), then in the local Hugging Face cache at the revision, then downloaded at that
  revision (never with ``VIVIDHEAD_OFFLINE=1``);
* nothing: the registry entry's default repository at its pinned revision.

Hub ids of registry entries without ``@revision`` use the entry's pinned commit; any other Hub id
without one downloads the Hub's ``main`` with a warning (pin it with ``@<commit>``).

Registry entries used here (``vividhead/weights.yaml``): ``soulx_flashhead_1_3b`` (the released
FlashHead Pro and Lite folders) and ``wav2vec2_base_960h``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from vividhead import weights as registry

log = logging.getLogger(__name__)

#: Registry name of the released FlashHead weights (``Model_Pro``, ``Model_Lite``, ``VAE_Wan``, ``VAE_LTX``).
FLASHHEAD_WEIGHTS = "soulx_flashhead_1_3b"
#: Registry name of the Wav2Vec 2.0 encoder the released model uses.
WAV2VEC_WEIGHTS = "wav2vec2_base_960h"

_HUB_ID = re.compile(r"(?:hf://)?(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?")


@dataclass(frozen=True)
class HubId:
    """A Hugging Face Hub model repository at an optional revision (commit, tag or branch)."""

    repo_id: str
    revision: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> Optional[HubId]:
        """``owner/name``, ``owner/name@rev`` or ``hf://owner/name[@rev]``; ``None`` for anything else."""
        m = _HUB_ID.fullmatch(text.strip())
        return cls(m["repo"], m["rev"]) if m else None


def _registry_spec_for(repo_id: str) -> Optional[registry.WeightSpec]:
    for spec in registry.REGISTRY.values():
        if spec.url == f"hf://{repo_id}":
            return spec
    return None


def resolve_source(
    source: Optional[str | Path],
    default: Optional[str] = None,
    allow_patterns: Optional[Sequence[str]] = None,
    required: Sequence[str] = (),
) -> Path:
    """A local folder for a weights source (module docstring).

    Args:
        source: local path, Hub id, or ``None`` for the registry entry ``default``.
        default: registry name used when ``source`` is ``None`` (and whose folder name and pinned
            revision apply when ``source`` is that entry's Hub id).
        allow_patterns: files to download from the Hub (``None``: all).
        required: paths that must exist inside a local copy for it to count (e.g. ``Model_Pro``);
            a copy without them is skipped.

    Returns:
        the folder.

    Raises:
        FileNotFoundError: ``source`` is neither an existing path nor a Hub id.
        vividhead.weights.WeightsNotFound: a Hub id not available locally while offline,
            or a download that failed (the message says where to put the folder).
    """
    spec = registry.REGISTRY[default] if default else None
    if source is None:
        if spec is None:
            raise FileNotFoundError("no weights source given and no registry default")
        hub = HubId.parse(spec.url)
    else:
        path = Path(source).expanduser()
        if path.exists():
            return path
        hub = HubId.parse(str(source))
        if hub is None:
            raise FileNotFoundError(f"{source}: no such file or folder, and not a Hub id (owner/name[@revision])")
        spec = _registry_spec_for(hub.repo_id)
    revision = hub.revision or (spec.revision if spec else None)

    def complete(folder: Path) -> bool:
        return folder.is_dir() and all((folder / r).exists() for r in required)

    if spec is not None and hub.revision in (None, spec.revision):
        roots = ([Path(os.environ["VIVIDHEAD_WEIGHTS_DIR"])] if os.environ.get("VIVIDHEAD_WEIGHTS_DIR") else [])
        for folder in (root / spec.filename for root in [*roots, registry.cache_dir()]):
            if complete(folder):
                return folder
    from huggingface_hub import snapshot_download

    where = (f"{hub.repo_id}@{revision or 'main'} is not in the local Hugging Face cache; download it "
             f"(`hf download {hub.repo_id}{' --revision ' + revision if revision else ''}`) or pass a local folder"
             + (f", or put it in $VIVIDHEAD_WEIGHTS_DIR/{spec.filename}" if spec else ""))
    try:
        folder = Path(snapshot_download(hub.repo_id, revision=revision, local_files_only=True,
                                        allow_patterns=list(allow_patterns) if allow_patterns else None))
        if complete(folder):
            return folder
    except Exception:
        pass
    if registry.offline():
        raise registry.WeightsNotFound(f"offline (VIVIDHEAD_OFFLINE=1): {where}")
    if revision is None:
        log.warning("%s: no revision given, downloading the Hub's current main (pin with @<commit>)", hub.repo_id)
    try:
        folder = Path(snapshot_download(hub.repo_id, revision=revision,
                                        allow_patterns=list(allow_patterns) if allow_patterns else None))
    except Exception as exc:
        raise registry.WeightsNotFound(f"download failed ({type(exc).__name__}): {where}") from exc
    if not complete(folder):
        raise registry.WeightsNotFound(f"{hub.repo_id}@{revision or 'main'} lacks {list(required)}")
    return folder
