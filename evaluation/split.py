"""A fixed, seeded test split by source id, so no source (and so no speaker of it) leaks from training.

:func:`make_test_split` holds out whole groups (by default the ``source_id`` column: the source
video a clip was cut from) and takes test clips only from them:

1. groups are ranked by ``sha256(f"{seed}:{group}")`` -- a fixed order per seed that does not
   change when other groups are added to or removed from the dataset;
2. within a group, clips are ranked the same way by key;
3. clips are taken round-robin over the groups in rank order -- one clip from each of the first
   ``num_clips`` groups when there are that many, else a second clip per group, and so on -- until
   ``num_clips`` clips are chosen (75 by default, the FlashHead report's evaluation size).

Every clip of a held-out group is excluded from training
(``ClipFilter(exclude_keys=split.train_exclude_keys)``), not only the chosen ones. Source ids keep
clips of one video apart; the same person in two different source videos (e.g. two uploads of one
speaker) can only be kept apart by grouping on a speaker column (``group_column``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

#: Clips in the FlashHead report's evaluation (75 sampled from HDTF and VFHQ).
DEFAULT_NUM_CLIPS = 75


@dataclass(frozen=True)
class TestSplit:
    """A held-out test split.

    Attributes:
        seed: the seed of the ranking.
        group_column: what groups were held out by (``source_id``).
        test_keys: the chosen clips' sample keys, in rank order.
        test_groups: the held-out groups, in rank order.
        train_exclude_keys: every clip of the held-out groups (sorted): keep these out of training.
        num_groups_total: groups in the input.
    """

    __test__ = False  # not a pytest test class

    seed: int
    group_column: str
    test_keys: tuple[str, ...]
    test_groups: tuple[str, ...]
    train_exclude_keys: tuple[str, ...]
    num_groups_total: int

    def to_json(self, path: str | Path) -> Path:
        """Write the split as JSON (lists) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()},
                                   indent=2))
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> TestSplit:
        """Read a split written by :meth:`to_json`.

        Raises:
            FileNotFoundError, KeyError, json.JSONDecodeError: missing or malformed file.
        """
        d = json.loads(Path(path).read_text())
        return cls(int(d["seed"]), d["group_column"], tuple(d["test_keys"]), tuple(d["test_groups"]),
                   tuple(d["train_exclude_keys"]), int(d["num_groups_total"]))


def _rank(seed: int, name: str) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def make_test_split(clips: Iterable[tuple[str, str]], num_clips: int = DEFAULT_NUM_CLIPS, seed: int = 0,
                    group_column: str = "source_id") -> TestSplit:
    """Choose the test clips (see the module docstring).

    Args:
        clips: ``(sample key, group)`` pairs, e.g. ``(key, source_id)`` of the manifest's kept clips.
        num_clips: test clips wanted (fewer when the input has fewer clips).
        seed: ranking seed.
        group_column: recorded in the split.

    Returns:
        :class:`TestSplit`.

    Raises:
        ValueError: ``num_clips < 1`` or a key appears twice.
    """
    if num_clips < 1:
        raise ValueError("num_clips must be >= 1")
    by_group: dict[str, list[str]] = {}
    seen: set[str] = set()
    for key, group in clips:
        if key in seen:
            raise ValueError(f"duplicate clip key {key!r}")
        seen.add(key)
        by_group.setdefault(str(group), []).append(key)
    groups = sorted(by_group, key=lambda g: _rank(seed, g))
    queues = {g: sorted(by_group[g], key=lambda k: _rank(seed, k)) for g in groups}
    chosen: list[str] = []
    used: list[str] = []
    depth = 0
    while len(chosen) < num_clips and any(len(q) > depth for q in queues.values()):
        for g in groups:
            if len(chosen) == num_clips:
                break
            if len(queues[g]) > depth:
                chosen.append(queues[g][depth])
                if depth == 0:
                    used.append(g)
        depth += 1
    exclude = sorted(k for g in used for k in by_group[g])
    return TestSplit(seed, group_column, tuple(chosen), tuple(used), tuple(exclude), len(groups))


def split_from_manifest(manifest: str | Path, num_clips: int = DEFAULT_NUM_CLIPS, seed: int = 0,
                        group_column: str = "source_id", storage_options: dict | None = None) -> TestSplit:
    """:func:`make_test_split` over the kept clips of a curation ``manifest.parquet``.

    Raises:
        pyarrow.ArrowInvalid: the manifest has no ``group_column``.
    """
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(str(manifest), "rb", **(storage_options or {})) as f:
        table = pq.read_table(f, columns=["key", "status", group_column])
    rows = [r for r in table.to_pylist() if r["status"] == "kept" and r["key"] is not None]
    return make_test_split(((r["key"], r[group_column]) for r in rows), num_clips, seed, group_column)
