"""Write an evaluation as ``report.json`` (every number, the protocol, the weight files' SHA-256),
``report.md`` (tables and plots, readable on the Hub or GitHub) and matplotlib PNGs under ``plots/``.

Figures computed with random weights are flagged in ``report.json`` (``random_weights``) and every
one of them is printed as "NOT A REAL FIGURE" in ``report.md``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

#: Per-video columns of the Markdown table: (key, header, format).
_VIDEO_COLUMNS = (
    ("frames", "frames", "d"),
    ("gen_sync_c", "Sync-C", ".2f"),
    ("gen_sync_d", "Sync-D", ".2f"),
    ("gen_av_offset", "offset", "d"),
    ("gen_asd", "Light-ASD", ".2f"),
    ("real_sync_c", "Sync-C (real)", ".2f"),
    ("real_sync_d", "Sync-D (real)", ".2f"),
    ("real_asd", "Light-ASD (real)", ".2f"),
)


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _json_default(o: Any):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def write_json(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` as indented JSON (NumPy values converted) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")
    return path


def plot_per_video(rows: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Bar chart of Sync-C and Light-ASD per video, generated next to real (PNG); None when there
    is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [(k, label) for k, label in (("sync_c", "Sync-C"), ("asd", "Light-ASD score"))
              if any(r.get(f"gen_{k}") is not None or r.get(f"real_{k}") is not None for r in rows)]
    if not panels:
        return None
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 0.35 * len(rows) + 2), 2.6 * len(panels)), squeeze=False)
    for ax, (key, label) in zip(axes[:, 0], panels):
        for off, prefix, name in ((-0.2, "gen", "generated"), (0.2, "real", "real")):
            ys = [r.get(f"{prefix}_{key}") for r in rows]
            ax.bar(x + off, [np.nan if y is None else y for y in ys], width=0.4, label=name)
        ax.set_ylabel(label)
        ax.axhline(0, color="grey", lw=0.6)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    for ax in axes[:-1, 0]:
        ax.set_xticks(x, [""] * len(x))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _weights_table(records: dict[str, dict]) -> list[str]:
    lines = ["| weights | file | SHA-256 | |", "|---|---|---|---|"]
    for name, r in sorted(records.items()):
        flag = f"**random weights (seed {r.get('seed')}), NOT REAL**" if r.get("random_weights") else "real"
        lines.append(f"| `{name}` | {Path(r['path']).name if r.get('path') else '-'} | `{r.get('sha256') or '-'}` | {flag} |")
    return lines


def _protocol_lines(protocol: dict[str, Any], indent: str = "") -> list[str]:
    out = []
    for k, v in protocol.items():
        if isinstance(v, dict):
            out.append(f"{indent}- **{k}**")
            out += _protocol_lines(v, indent + "  ")
        else:
            out.append(f"{indent}- {k}: {v}")
    return out


def render_markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    """The ``report.md`` text of a :func:`vividhead.evaluation.score.score_videos` report."""
    m, rnd, skipped = report["metrics"], report.get("random_weights", {}), report.get("skipped", {})
    not_real = lambda metric: " **NOT A REAL FIGURE (random weights)**" if rnd.get(metric) else ""  # noqa: E731
    lines = ["# vividhead evaluation", ""]
    if report.get("inputs"):
        lines += [f"- {k}: `{v}`" for k, v in report["inputs"].items()]
    failed = f" ({m['num_failed']} not scored: see their rows)" if m.get("num_failed") else ""
    lines += [f"- created: {report.get('created')}", f"- videos: {m.get('num_videos')}{failed}, frames: {m.get('num_frames')}", ""]
    if any(rnd.values()):
        lines += ["> **Random weights**: " + ", ".join(sorted(k for k, v in rnd.items() if v))
                  + " were computed with seeded random weights to exercise the code. They are NOT real figures.", ""]
    lines += ["## Set-level metrics", "", "| metric | value | note |", "|---|---|---|"]
    if "fid" in m:
        lines.append(f"| FID | {_fmt(m['fid'], '.3f')} | {m['fid_frames_generated']} / {m['fid_frames_real']} frames |")
    if "kid_mean" in m:
        lines.append(f"| KID | {_fmt(m['kid_mean'], '.5f')} +/- {_fmt(m['kid_std'], '.5f')} | subsets of {m['kid_subset_size']} |")
    if "fvd" in m:
        few = " (few clips: unreliable)" if min(m["fvd_clips_generated"], m["fvd_clips_real"]) < 400 else ""
        lines.append(f"| FVD | {_fmt(m['fvd'], '.3f')}{not_real('fvd')} | {m['fvd_clips_generated']} / "
                     f"{m['fvd_clips_real']} clips{few} |")
    for prefix, who in (("gen", "generated"), ("real", "real")):
        for key, label, metric in (("sync_c", "Sync-C", "sync"), ("sync_d", "Sync-D", "sync"), ("asd", "Light-ASD", "asd")):
            k = f"{prefix}_{key}_mean"
            if k in m:
                lines.append(f"| {label} ({who}) | {_fmt(m[k], '.3f')}{not_real(metric)} | mean over "
                             f"{m[f'{prefix}_{key}_videos']} videos |")
    for metric, reason in sorted(skipped.items()):
        lines.append(f"| {metric} | not computed | {reason} |")
    lines += ["", "## Per video", ""]
    if any(rnd.get(x) for x in ("sync",)):
        lines += ["Sync-C / Sync-D / offset below are NOT real figures (random SyncNet weights).", ""]
    rows = report["per_video"]
    cols = [c for c in _VIDEO_COLUMNS if any(r.get(c[0]) is not None for r in rows) or c[0] == "frames"]
    lines.append("| video | " + " | ".join(h for _, h, _ in cols) + " | note |")
    lines.append("|---|" + "---|" * len(cols) + "---|")
    for r in rows:
        note = "; ".join(f"{w}: {r[f'{p}_error']}" for p, w in (("gen", "generated"), ("real", "real")) if r.get(f"{p}_error"))
        if r.get("error"):
            note = f"**not scored**: {r['error']}".replace("|", "/")
        elif r.get("generated_frames") != r.get("real_frames"):
            note = "; ".join(x for x in (note, f"frames {r.get('generated_frames')} vs {r.get('real_frames')}") if x)
        lines.append(f"| {r['name']} | " + " | ".join(_fmt(r.get(k), f) for k, _, f in cols) + f" | {note} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in plots.items()]
    lines += ["", "## Protocol", ""] + _protocol_lines(report["protocol"])
    for section in ("generation", "split"):
        if report.get(section):
            lines += ["", f"## {section.capitalize()}", ""] + _protocol_lines(report[section])
    lines += ["", "## Weights", ""] + _weights_table(report.get("weights", {}))
    if report.get("timing_s"):
        lines += ["", "## Time (s)", "", "| part | s |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in report["timing_s"].items()]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``plots/per_video.png`` and ``report.md`` under ``out``.

    Returns:
        ``{"json": ..., "md": ..., "per_video": ...}`` paths (the plot only when there was something
        to plot).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    plot = plot_per_video(report["per_video"], out / "plots" / "per_video.png")
    plots = {}
    if plot is not None:
        paths["per_video"] = plot
        plots["per-video Sync-C and Light-ASD"] = "plots/per_video.png"
    paths["json"] = write_json(report, out / "report.json")
    paths["md"] = out / "report.md"
    paths["md"].write_text(render_markdown(report, plots))
    return paths


def render_drift_markdown(report: dict[str, Any], plot: str | None) -> str:
    """The ``drift.md`` text of a drift report (``rows`` from :func:`vividhead.evaluation.drift.drift_metrics`)."""
    rows = report["rows"]
    keys = [k for k in ("color_delta_e", "brightness_delta", "color_std_ratio", "sharpness_ratio", "asd_score",
                        "sync_c", "sync_d", "latent_norm", "fid_vs_reference") if any(r.get(k) is not None for r in rows)]
    lines = ["# vividhead drift", ""] + [f"- {k}: `{v}`" for k, v in report.get("inputs", {}).items()]
    lines += [f"- window: {report['window_s']} s, {len(rows)} windows", ""]
    if report.get("random_weights"):
        lines += ["> **Random weights**: " + ", ".join(report["random_weights"]) + ": NOT real figures.", ""]
    if plot:
        lines += [f"![drift]({plot})", ""]
    lines.append("| window | start s | " + " | ".join(keys) + " |")
    lines.append("|---|---|" + "---|" * len(keys))
    for r in rows:
        lines.append(f"| {r['window']} | {r['start_s']:.1f} | " + " | ".join(_fmt(r.get(k), ".3f") for k in keys) + " |")
    if rows and rows[0].get("face_error"):
        lines += ["", f"Face metrics not computed: {rows[0]['face_error']}."]
    lines += ["", "## Weights", ""] + _weights_table(report.get("weights", {}))
    return "\n".join(lines) + "\n"
