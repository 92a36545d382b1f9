"""Generate the Hugging Face Hub dataset card (``OUT/README.md`` + ``OUT/card/*.png``).

The card is computed from ``OUT/manifest.parquet`` and ``OUT/stats.json`` alone, deterministically:
the same two files give a byte-identical README.md and PNGs (no dates, sorted tables, fixed chart
style). Its YAML header is built with ``huggingface_hub.DatasetCardData`` and checked by parsing
the written card back with ``huggingface_hub.DatasetCard``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from huggingface_hub import DatasetCard, DatasetCardData

from vividhead.datasets_card import charts
from vividhead.shard_format import (
    FPS,
    FRAME_SIZE_PX,
    FRAME_STRIDE,
    JSON,
    KEPT,
    MANIFEST_FILE,
    MASK,
    MP4,
    REJECTED,
    SAMPLE_RATE_HZ,
    SAMPLES_PER_FRAME,
    SHARD_DIR,
    SHARD_GLOB,
    STATS_FILE,
    WAV,
    WAV2VEC,
)

#: Manifest columns drawn as distributions: (column, title, x label).
DISTRIBUTIONS = (
    ("duration_s", "Clip duration", "seconds"),
    ("lse_c", "SyncNet confidence LSE-C", "LSE-C (higher is better)"),
    ("lse_d", "SyncNet distance LSE-D", "LSE-D (lower is better)"),
    ("face_px", "Face size", "face box width in source pixels"),
    ("speech_share", "Speech share", "fraction of the clip with speech"),
)
_LANG_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
_SIZE_CATEGORIES = [
    (1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
]


@dataclass(frozen=True)
class CardOptions:
    """Card settings that are not in the manifest or stats.

    Attributes:
        pretty_name: dataset name shown on the Hub.
        license: Hub licence id; "other" needs ``license_name`` (and ideally ``license_link``).
        license_name / license_link: name and URL of a custom licence (for "other").
        task_categories: Hub task ids.
        tags: extra Hub tags.
    """

    pretty_name: str = "VividHead"
    license: str = "other"
    license_name: str | None = "vividhead-source-terms"
    license_link: str | None = None
    task_categories: tuple[str, ...] = ("image-to-video",)
    tags: tuple[str, ...] = ("talking-head", "audio-driven", "lip-sync", "video", "audio", "webdataset")


@dataclass
class CardResult:
    """What :func:`write_card` wrote.

    Attributes:
        readme: path of README.md.
        charts: PNG paths, in card order.
        totals: the headline numbers (clips, hours, speakers, languages, ...).
        metadata: the YAML header as a dict.
    """

    readme: Path
    charts: list[Path] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def size_category(n: int) -> str:
    """Hub ``size_categories`` value for ``n`` examples (e.g. 330000 -> "100K<n<1M")."""
    for bound, name in _SIZE_CATEGORIES:
        if n < bound:
            return name
    return "n>1B"


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.{digits}f}"


def _column(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "median": None, "mean": None, "max": None}
    s = sorted(values)
    mid = len(s) // 2
    median = s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
    return {"min": s[0], "median": median, "mean": math.fsum(s) / len(s), "max": s[-1]}


def compute_totals(manifest: pa.Table) -> dict[str, Any]:
    """Headline numbers of the kept clips.

    Clip rows are rows with a ``clip_id``; kept clips have ``status == "kept"`` and a ``key``.
    Speakers are counted from ``speaker_id`` when the manifest has it, otherwise from distinct
    ``source_id`` (one speaker per source video, an approximation the card states).

    Returns:
        {"clips", "hours", "frames", "speakers", "speaker_column", "languages" (sorted list),
         "language_counts" (dict), "inputs", "sources", "shards", "rejected_rows"}.
    """
    status = _column(manifest, "status")
    key = _column(manifest, "key")
    kept = [i for i, (s, k) in enumerate(zip(status, key)) if s == KEPT and k is not None]
    take = manifest.take(pa.array(kept, type=pa.int64()))
    dur = [d for d in _column(take, "duration_s") if d is not None]
    speaker_col = "speaker_id" if "speaker_id" in manifest.column_names else "source_id"
    langs = Counter(x for x in _column(take, "language") if x)
    return {
        "clips": len(kept),
        "hours": math.fsum(dur) / 3600.0,
        "frames": int(sum(n for n in _column(take, "num_frames") if n is not None)),
        "speakers": len({x for x in _column(take, speaker_col) if x is not None}),
        "speaker_column": speaker_col,
        "languages": sorted(langs),
        "language_counts": dict(sorted(langs.items(), key=lambda kv: (-kv[1], kv[0]))),
        "inputs": len({x for x in _column(manifest, "input_id") if x is not None}),
        "sources": len({x for x in _column(take, "source_id") if x is not None}),
        "shards": len({x for x in _column(take, "shard") if x is not None}),
        "rejected_rows": sum(1 for s in status if s == REJECTED),
    }


def build_metadata(totals: dict[str, Any], options: CardOptions) -> DatasetCardData:
    """The card's YAML header as ``huggingface_hub.DatasetCardData``.

    Includes licence, task categories, size category, languages (valid ISO codes only), tags and
    one ``configs`` entry, ``default``: the WebDataset shards ``shards/*.tar``. (``datasets`` picks one
    builder for all configs of a repo from the first config's files, so the Parquet manifest cannot be
    a second config; it is loaded with ``load_dataset("parquet", data_files=...)``.)
    """
    kwargs: dict[str, Any] = {
        "pretty_name": options.pretty_name,
        "license": options.license,
        "task_categories": list(options.task_categories),
        "size_categories": [size_category(totals["clips"])],
        "tags": list(options.tags),
    }
    langs = [x for x in totals["languages"] if _LANG_CODE.match(x)]
    if langs:
        kwargs["language"] = langs
    if options.license == "other":
        if options.license_name:
            kwargs["license_name"] = options.license_name
        if options.license_link:
            kwargs["license_link"] = options.license_link
    kwargs["configs"] = [
        {"config_name": "default", "default": True, "data_files": [{"split": "train", "path": SHARD_GLOB}]},
    ]
    return DatasetCardData(**kwargs)


def validate_card(text: str) -> DatasetCardData:
    """Parse a card with ``huggingface_hub.DatasetCard`` and check the fields the Hub needs.

    Raises:
        ValueError: missing licence, task categories, size category or configs, or a config
            without data files.
    """
    data = DatasetCard(text).data
    d = data.to_dict()
    for k in ("license", "task_categories", "size_categories", "configs"):
        if not d.get(k):
            raise ValueError(f"card metadata has no {k}")
    if d["license"] == "other" and not d.get("license_name"):
        raise ValueError("license 'other' needs license_name")
    for cfg in d["configs"]:
        if not cfg.get("config_name") or not cfg.get("data_files"):
            raise ValueError(f"bad config {cfg}")
    return data


def stage_order(stats: dict[str, Any]) -> list[str]:
    """The stages of ``stats["stages"]`` in pipeline order.

    Uses ``stats["stage_order"]`` when present (stats.json is written with sorted keys), else the
    pipeline's stage list (:data:`vividhead.curation.stage_list.STAGE_ORDER`); stages it does not
    know follow in their stats.json order.
    """
    names = list((stats.get("stages") or {}).keys())
    known = stats.get("stage_order")
    if not known:
        from vividhead.curation.stage_list import STAGE_ORDER  # imports the stages: only when needed

        known = list(STAGE_ORDER)
    rank = {name: i for i, name in enumerate(known)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))


@dataclass(frozen=True)
class FunnelRow:
    """One stage of the funnel; ``enabled`` False means the stage was off (no counts)."""

    name: str
    enabled: bool
    n_in: int = 0
    n_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float | None = None


def _funnel_rows(stats: dict[str, Any]) -> list[FunnelRow]:
    rows = []
    stages = stats.get("stages") or {}
    for name in stage_order(stats):
        st = stages[name]
        if not st.get("enabled", True):  # stats.json of a run with the stage disabled
            rows.append(FunnelRow(name, False))
            continue
        dropped = {str(k): int(v) for k, v in (st.get("dropped") or {}).items()}
        rows.append(FunnelRow(name, True, int(st.get("in", 0)), int(st.get("out", 0)), dropped, st.get("seconds")))
    return rows


def render_readme(manifest: pa.Table, stats: dict[str, Any], chart_names: dict[str, str],
                  options: CardOptions = CardOptions()) -> tuple[str, dict[str, Any], DatasetCardData]:
    """Render README.md text (YAML header + body) from the manifest table and stats dict.

    Args:
        manifest: ``manifest.parquet`` as a table.
        stats: ``stats.json`` as a dict.
        chart_names: {chart id: path relative to OUT} of the PNGs to embed.
        options: licence and naming.

    Returns:
        (card text, totals, metadata).
    """
    totals = compute_totals(manifest)
    meta = build_metadata(totals, options)
    kept_mask = [s == KEPT and k is not None for s, k in zip(_column(manifest, "status"), _column(manifest, "key"))]
    L: list[str] = []
    add = L.append
    add(f"# {options.pretty_name}")
    add("")
    add("Talking-head video clips curated with the vividhead pipeline (VividHead recipe, SoulX-FlashHead §2): "
        f"{FRAME_SIZE_PX}x{FRAME_SIZE_PX} face-centred frames at {FPS} fps with time-aligned "
        f"{SAMPLE_RATE_HZ / 1000:g} kHz speech and per-clip metadata, "
        "stored as WebDataset shards with a Parquet manifest of every input and clip, kept or rejected.")
    add("")
    add("## Summary")
    add("")
    add("| | |")
    add("|---|---|")
    add(f"| clips | {totals['clips']:,} |")
    add(f"| hours | {_fmt(totals['hours'])} |")
    add(f"| frames | {totals['frames']:,} |")
    spk_note = "" if totals["speaker_column"] == "speaker_id" else " (distinct source videos; no speaker ids)"
    add(f"| speakers | {totals['speakers']:,}{spk_note} |")
    add(f"| languages | {len(totals['languages'])}" + (f" ({', '.join(totals['languages'])})" if totals["languages"] else "") + " |")
    add(f"| input videos | {totals['inputs']:,} |")
    add(f"| shards | {totals['shards']:,} |")
    add(f"| pipeline version | {stats.get('version', 'n/a')} |")
    if stats.get("wall_s") is not None:
        add(f"| pipeline wall time | {_fmt(float(stats['wall_s']) / 3600.0)} h |")
    add("")
    add("## Layout")
    add("")
    add(f"- `{SHARD_DIR}/{{shard:05d}}.tar`: WebDataset shards, one sample per clip, key `<source_id>-<clip index>`. "
        f"Members: `<key>.{MP4}` (H.264 {FRAME_SIZE_PX}x{FRAME_SIZE_PX}, {FPS} fps CFR, {FRAME_STRIDE}k+1 frames), "
        f"`<key>.{WAV}` ({SAMPLE_RATE_HZ / 1000:g} kHz mono PCM s16, {SAMPLES_PER_FRAME} samples per frame), "
        f"`<key>.{JSON}` (metadata and scores), optionally `<key>.{WAV2VEC}` "
        f"(float16 [frames, layers, dim], row t = video frame t) and `<key>.{MASK}` (face and lip masks, landmarks).")
    add(f"- `{MANIFEST_FILE}`: one row per input and per clip with `status` ({KEPT}/{REJECTED}), the rejecting "
        "`stage` and `reason`, timings and every score. "
        f"Load it with `datasets.load_dataset(\"parquet\", data_files=\"hf://datasets/ORG/NAME/{MANIFEST_FILE}\")`.")
    add(f"- `{STATS_FILE}`: per-stage counts, drop reasons and seconds, and the pipeline config.")
    add("")
    add("```python")
    add("from vividhead.training.data import ClipWindowDataset, ClipFilter  # vividhead")
    add("ds = ClipWindowDataset.from_output_dir(\"hf://datasets/ORG/NAME\", clip_filter=ClipFilter(min_lse_c=6.0))")
    add("```")
    add("")
    add("## Filtering funnel")
    add("")
    rows = _funnel_rows(stats)
    if rows:
        add("| stage | in | out | dropped | reasons | seconds |")
        add("|---|---:|---:|---:|---|---:|")
        for row in rows:
            if not row.enabled:
                add(f"| {row.name} | off | off | - | stage disabled | - |")
                continue
            reasons = ", ".join(f"`{r}` {c:,}" for r, c in sorted(row.dropped.items(), key=lambda kv: (-kv[1], kv[0])))
            add(f"| {row.name} | {row.n_in:,} | {row.n_out:,} | {sum(row.dropped.values()):,} | {reasons or '-'} | "
                f"{_fmt(float(row.seconds), 1) if row.seconds is not None else 'n/a'} |")
        if any(not row.enabled for row in rows):
            add("")
            add("Stages marked `off` were disabled in this run's config: they filtered nothing and computed nothing.")
        add("")
        if "funnel" in chart_names:
            add(f"![Filtering funnel]({chart_names['funnel']})")
            add("")
    else:
        add("stats.json has no stage counts.")
        add("")
    reasons = Counter(
        (st or "-", r or "-")
        for s, st, r in zip(_column(manifest, "status"), _column(manifest, "stage"), _column(manifest, "reason"))
        if s == REJECTED
    )
    if reasons:
        add("Rejected manifest rows (inputs and clips) by stage and reason:")
        add("")
        add("| stage | reason | rows |")
        add("|---|---|---:|")
        for (st, r), c in sorted(reasons.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1])):
            add(f"| {st} | `{r}` | {c:,} |")
        add("")
    add("## Distributions (kept clips)")
    add("")
    add("| metric | n | null | min | median | mean | max |")
    add("|---|---:|---:|---:|---:|---:|---:|")
    for col, title, _ in DISTRIBUTIONS:
        vals = [v for v, k in zip(_column(manifest, col), kept_mask) if k]
        present = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
        s = _summary(present)
        add(f"| {title} (`{col}`) | {len(present):,} | {len(vals) - len(present):,} | {_fmt(s['min'])} | "
            f"{_fmt(s['median'])} | {_fmt(s['mean'])} | {_fmt(s['max'])} |")
    add("")
    for col, title, _ in DISTRIBUTIONS:
        if col in chart_names:
            add(f"![{title}]({chart_names[col]})")
    add("")
    if totals["language_counts"]:
        add("## Languages")
        add("")
        add("| language | clips |")
        add("|---|---:|")
        for lang, c in totals["language_counts"].items():
            add(f"| {lang} | {c:,} |")
        add("")
        if "language" in chart_names:
            add(f"![Clips per language]({chart_names['language']})")
            add("")
    add("## Pipeline config")
    add("")
    add(f"Produced by vividhead {stats.get('version', 'n/a')} with this configuration (from `stats.json`):")
    add("")
    add("```yaml")
    add(yaml.safe_dump(stats.get("config") or {}, sort_keys=True, default_flow_style=False).rstrip())
    add("```")
    add("")
    add("## Ethics and licence")
    add("")
    add("- **Sources keep their rights.** Each clip is cut from a source video listed in the manifest (`url`). "
        "The copyright and licence of every source stay with its owner; this card's licence covers only what the "
        "publisher has the right to license. Do not redistribute source videos, or clips of sources whose terms "
        "forbid it, without the rights holder's permission. Publishers must check the terms of every source "
        "before uploading shards.")
    add("- **People.** Clips show identifiable faces and voices, which are personal data in many jurisdictions. "
        "Use them only for research on talking-head synthesis and its detection; do not use them to identify, "
        "profile or impersonate people, or to make synthetic media of a real person without their consent. "
        "Label generated videos as synthetic.")
    add("- **Annotations are model estimates.** Language, gender, age band and ethnicity come from automatic "
        "classifiers; they are noisy, may be wrong for individuals, and are provided only to measure and balance "
        "the dataset's coverage, never to infer attributes of a person.")
    add("- **Removal requests.** A person or rights holder who wants a clip removed can open a discussion on "
        "this dataset's page; the publisher deletes the clip's rows and samples and republishes.")
    add("")
    body = "\n".join(L)
    text = f"---\n{meta.to_yaml()}\n---\n\n{body}"
    return text, totals, meta


def write_card(out: str | Path, options: CardOptions = CardOptions()) -> CardResult:
    """Write ``OUT/README.md`` and the charts ``OUT/card/*.png`` from the manifest and stats.

    Args:
        out: curation output directory with ``manifest.parquet`` and ``stats.json``.
        options: licence and naming.

    Returns:
        What was written.

    Raises:
        FileNotFoundError: if ``manifest.parquet`` or ``stats.json`` is missing.
        ValueError: if the generated card fails :func:`validate_card`.
    """
    out = Path(out)
    for name in (MANIFEST_FILE, STATS_FILE):
        if not (out / name).is_file():
            raise FileNotFoundError(f"{out / name} not found (the curation pipeline writes it)")
    manifest = pq.read_table(out / MANIFEST_FILE)
    stats = json.loads((out / STATS_FILE).read_text())
    chart_dir = out / "card"
    written: list[Path] = []
    names: dict[str, str] = {}
    rows = _funnel_rows(stats)
    if rows:
        written.append(charts.funnel([r.name for r in rows], [r.n_in for r in rows], [r.n_out for r in rows],
                                     chart_dir / "funnel.png", off=[not r.enabled for r in rows]))
        names["funnel"] = "card/funnel.png"
    kept = [s == KEPT and k is not None for s, k in zip(_column(manifest, "status"), _column(manifest, "key"))]
    for col, title, xlabel in DISTRIBUTIONS:
        vals = [v for v, k in zip(_column(manifest, col), kept) if k]
        present = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
        written.append(charts.histogram(present, chart_dir / f"{col}.png", title, xlabel,
                                        missing=len(vals) - len(present)))
        names[col] = f"card/{col}.png"
    totals = compute_totals(manifest)
    if totals["language_counts"]:
        langs = list(totals["language_counts"])
        written.append(charts.bars(langs, [totals["language_counts"][x] for x in langs],
                                   chart_dir / "language.png", "Clips per language", "clips"))
        names["language"] = "card/language.png"
    text, totals, meta = render_readme(manifest, stats, names, options)
    validate_card(text)
    readme = out / "README.md"
    readme.write_text(text, encoding="utf-8")
    return CardResult(readme=readme, charts=written, totals=totals, metadata=meta.to_dict())
