"""The card and publish tests run on the session's real curation output (``curated_shards``: 5 kept
clips from 4 sources, rejections at probe, dedup, scene_split, normalize and face), with scores of the
stages the offline pipeline does not run written into its manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

#: SyncNet, language and speech values of the kept clips (null in the offline run's manifest).
SCORES = {
    "talk_retalking_face2-0000": {"lse_c": 7.5, "lse_d": 7.0, "language": "en", "speech_share": 0.8},
    "talk_retalking_face2-0001": {"lse_c": 6.5, "lse_d": 7.4, "language": "en", "speech_share": 0.9},
    "talk_retalking_face3-0000": {"lse_c": 8.1, "lse_d": 6.9, "language": "de", "speech_share": 0.7},
    "talk_retalking_face5-0000": {"lse_c": None, "lse_d": None, "language": "zh", "speech_share": 0.6},
    "talk_hdtf_aoc_512-0000": {"lse_c": 5.2, "lse_d": 8.0, "language": "unknown lang", "speech_share": None},
}


@pytest.fixture
def out_dir(copy_curated) -> Path:
    """A fresh writable copy of the curation output with :data:`SCORES` (no card yet)."""
    return copy_curated(SCORES)


@pytest.fixture(scope="session")
def carded_dir(copy_curated) -> Path:
    """A copy of the curation output with :data:`SCORES` and its card written once (read-only for tests)."""
    from vividhead.datasets_card.card import write_card

    out = copy_curated(SCORES)
    write_card(out)
    return out
