"""Helpers of ``benchmarks/run_curate_gpu_node.sh`` (a whole ``vividhead curate`` run on one node) and
``benchmarks/stage_curate_gpu_wheels.sh`` (what that run needs, staged on the development machine).

    python3 benchmarks/curate_gpu_node.py config --base examples/curate_gpu.yaml \
        --overlay examples/curate_offline.yaml --out RUN/config.yaml [--samples-per-shard 8] [--keep-dedup]
    python3 benchmarks/curate_gpu_node.py weights --config RUN/config.yaml      (needs VIVIDHEAD_WEIGHTS_DIR)
    python3 benchmarks/curate_gpu_node.py monitor --output RUN/out --jsonl OUT/curate.jsonl --t0 EPOCH \
        [--gpu-csv OUT/gpu.csv] [--interval 20]
    python3 benchmarks/curate_gpu_node.py final --output RUN/out --jsonl OUT/curate.jsonl --t0 EPOCH \
        --t1 EPOCH [--gpu-csv OUT/gpu.csv] [--rc RC] [--extra JSON]

``config``: the base config (``examples/curate_gpu.yaml``: resources of the frame stages) with every
``enabled: false`` of the overlay (``examples/curate_offline.yaml``: the stages whose weights are not
in the fixtures), ``dedup`` off (the inputs are the fixture videos repeated, byte-identical copies) and
small shards (a manifest part is written every few kept clips, so a run stopped at its time limit still
shows its progress). ``weights``: the weight files the enabled stages need, one path a line.

``monitor`` appends one JSON line every ``--interval`` seconds, read from the manifest parts written
so far; ``final`` one line from ``manifest.parquet`` (or the parts, if the run was stopped). Each line:
seconds since ``--t0`` (the start of ``vividhead curate``), inputs finished and their seconds of video,
**video-hours per node-hour** (video of the finished inputs over the wall time), clips kept, the GPU's
busy share (mean ``utilization.gpu`` of the samples in ``--gpu-csv``, lines ``epoch,util,mem_mib``), the
node's CPU busy share (``/proc/stat``, all processes) and the CPU seconds per stage (the manifest's
``cpu:<stage>`` timings summed over rows; the wall seconds per stage likewise). A progress line also
has ``interval``: the rate and the node's CPU busy share since the line before it. The final line
adds ``steady_video_hours_per_node_hour`` (from the first progress line with inputs done to the end:
Ray's start-up and the first inputs' way through the pipeline left out), its node-hours for 10,000 h,
``last_120s_video_hours_per_node_hour`` (from the last progress line at least 120 s before the end)
and the node's ``cpu_model``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from curation_throughput import cpu_busy_s, source_name, without_dedup  # this script's folder is first on sys.path

REPO = Path(__file__).resolve().parents[1]
PART_DIR, MANIFEST_FILE, STATS_FILE, KEPT = "_parts", "manifest.parquet", "stats.json", "kept"


def merged_config(base: dict, overlay: dict | None, samples_per_shard: int, keep_dedup: bool) -> dict:
    """``base`` plus the overlay's ``enabled: false`` sections, dedup off and small shards."""
    cfg = {k: dict(v or {}) for k, v in (base or {}).items()}
    for name, section in (overlay or {}).items():
        if isinstance(section, dict) and section.get("enabled") is False:
            cfg.setdefault(name, {})["enabled"] = False
    if not keep_dedup:
        cfg = without_dedup(cfg)
    cfg.setdefault("write", {})["samples_per_shard"] = samples_per_shard
    return cfg


def cmd_config(args: argparse.Namespace) -> None:
    import yaml

    base = yaml.safe_load(Path(args.base).read_text())
    overlay = yaml.safe_load(Path(args.overlay).read_text()) if args.overlay else None
    cfg = merged_config(base, overlay, args.samples_per_shard, args.keep_dedup)
    Path(args.out).write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(json.dumps(cfg, sort_keys=False))


def cmd_weights(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    from vividhead import weights
    from vividhead.curation.config import load_config
    from vividhead.curation.pipeline import build_stages

    paths = set()
    for stage in build_stages(load_config(args.config)):
        if stage.cfg.enabled:
            for name, explicit in stage.weights():
                paths.add(str(weights.resolve(name, explicit, download=False)))
    print("\n".join(sorted(paths)))


def read_rows(output: Path) -> tuple[list[dict], str]:
    """Manifest rows: ``manifest.parquet`` when the run finished, else every readable part."""
    import pyarrow.parquet as pq

    cols = ["input_id", "url", "clip_id", "status", "stage", "reason", "duration_s", "source_duration_s", "timings"]
    if (output / MANIFEST_FILE).is_file():
        return pq.read_table(output / MANIFEST_FILE, columns=cols).to_pylist(), "manifest"
    rows: list[dict] = []
    for part in sorted((output / PART_DIR).glob("part-*.parquet")):
        try:
            rows += pq.read_table(part, columns=cols).to_pylist()
        except Exception:  # noqa: BLE001 - a part being written: the next tick reads it
            continue
    return rows, "parts"


def gpu_busy(gpu_csv: Path | None, t0: float, t1: float) -> dict | None:
    """Mean and max ``utilization.gpu`` (%) and max memory of the samples taken in [t0, t1]."""
    if not gpu_csv or not gpu_csv.is_file():
        return None
    util, mem = [], []
    for line in gpu_csv.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            t, u, m = float(parts[0]), float(parts[1]), float(parts[2])
        except (ValueError, IndexError):
            continue
        if t0 <= t <= t1:
            util.append(u)
            mem.append(m)
    if not util:
        return None
    return {"gpu_busy_share": round(sum(util) / len(util) / 100.0, 4), "gpu_util_max_pct": max(util),
            "gpu_mem_max_mib": max(mem), "gpu_samples": len(util)}


def video_seconds(url: str, row_s: float | None, durations: dict[str, float]) -> float:
    """Seconds of an input: the fixture's (``durations``: file name -> seconds; the inputs are
    ``r<NN>_<name>`` links, :func:`curation_throughput.copy_name`), else the manifest's
    ``source_duration_s`` (None for inputs probe rejected)."""
    name = source_name(Path(url or "").name)
    return durations.get(name, row_s or 0.0)


def figures(output: Path, t0: float, now: float, gpu_csv: Path | None, busy0: float | None,
            durations: dict[str, float] | None = None) -> dict:
    """One progress record of the run (see the module doc)."""
    rows, source = read_rows(output)
    durations = durations or {}
    inputs: dict[str, float] = {}
    stage_cpu: dict[str, float] = {}
    stage_wall: dict[str, float] = {}
    kept = 0
    kept_s = 0.0
    reasons: dict[str, int] = {}
    for r in rows:
        inputs[r["input_id"]] = video_seconds(r.get("url"), r.get("source_duration_s"), durations)
        if r["status"] == KEPT and r.get("clip_id") is not None:
            kept += 1
            kept_s += r.get("duration_s") or 0.0
        elif r["status"] != KEPT:
            key = f"{r.get('stage')}:{r.get('reason')}"
            reasons[key] = reasons.get(key, 0) + 1
        for key, seconds in json.loads(r.get("timings") or "{}").items():
            target = stage_cpu if key.startswith("cpu:") else stage_wall
            name = key[4:] if key.startswith("cpu:") else key
            target[name] = target.get(name, 0.0) + seconds
    wall = max(now - t0, 1e-9)
    video_s = sum(inputs.values())
    ncpu = os.cpu_count() or 1
    busy = cpu_busy_s()
    rec = {
        "t_s": round(wall, 1),
        "from": source,
        "inputs_done": len(inputs),
        "input_video_s_done": round(video_s, 1),
        "video_hours_per_node_hour": round(video_s / wall, 2),  # video-s per wall-s = video-h per node-h
        "clips_kept": kept,
        "kept_video_s": round(kept_s, 1),
        "node_cpus": ncpu,
        "node_cpu_busy_share": round((busy - busy0) / (wall * ncpu), 4) if busy is not None and busy0 is not None else None,
        "stage_cpu_s": {k: round(v, 1) for k, v in sorted(stage_cpu.items(), key=lambda kv: -kv[1])},
        "stage_cpu_s_total": round(sum(stage_cpu.values()), 1),
        "stage_cpu_s_per_input_video_s": round(sum(stage_cpu.values()) / video_s, 4) if video_s else None,
        "stage_wall_s": {k: round(v, 1) for k, v in sorted(stage_wall.items(), key=lambda kv: -kv[1])},
        "rejected_by_stage_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
    }
    rec.update(gpu_busy(gpu_csv, t0, now) or {"gpu_busy_share": None})
    if video_s:
        rec["node_hours_for_10000_video_hours"] = round(10000.0 / (video_s / wall), 1)
    return rec


def interval_fields(prev: dict | None, rec: dict) -> dict | None:
    """Rate (video-h per node-h) and node CPU busy share between two progress records."""
    if not prev or "t_s" not in prev or "input_video_s_done" not in prev or rec.get("t_s", 0) <= prev["t_s"]:
        return None
    dt = rec["t_s"] - prev["t_s"]
    out = {"from_t_s": prev["t_s"],
           "video_hours_per_node_hour": round((rec.get("input_video_s_done", 0) - prev["input_video_s_done"]) / dt, 2)}
    if rec.get("node_cpu_busy_share") is not None and prev.get("node_cpu_busy_share") is not None:
        busy = rec["node_cpu_busy_share"] * rec["t_s"] - prev["node_cpu_busy_share"] * prev["t_s"]
        out["node_cpu_busy_share"] = round(busy / dt, 4)
    return out


def rate_fields(progress: list[dict], final: dict, window_s: float = 120.0) -> dict:
    """The final record's rates beside the whole run's (see the module doc); ``{}`` when no
    progress line had inputs done before the end."""
    lines = [p for p in progress if p.get("kind") == "progress" and "input_video_s_done" in p
             and p.get("t_s", 0) < final["t_s"]]
    out: dict = {}
    first = next((p for p in lines if p.get("inputs_done")), None)
    if first is not None:
        rate = (final["input_video_s_done"] - first["input_video_s_done"]) / (final["t_s"] - first["t_s"])
        out["steady_from_t_s"] = first["t_s"]
        out["steady_video_hours_per_node_hour"] = round(rate, 2)
        if rate > 0:
            out["steady_node_hours_for_10000_video_hours"] = round(10000.0 / rate, 1)
    last = [p for p in lines if p["t_s"] <= final["t_s"] - window_s]
    if last:
        p = last[-1]
        out[f"last_{window_s:g}s_video_hours_per_node_hour"] = round(
            (final["input_video_s_done"] - p["input_video_s_done"]) / (final["t_s"] - p["t_s"]), 2)
    return out


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def load_durations(path: str | None) -> dict[str, float]:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else {}


def append(jsonl: Path, rec: dict) -> None:
    with open(jsonl, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)


def cmd_monitor(args: argparse.Namespace) -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    busy0 = cpu_busy_s()
    if args.busy0_file and busy0 is not None:
        Path(args.busy0_file).write_text(str(busy0))
    prev = None
    while not stop:
        for _ in range(int(args.interval * 10)):
            if stop:
                return
            time.sleep(0.1)
        try:
            rec = figures(Path(args.output), args.t0, time.time(), Path(args.gpu_csv) if args.gpu_csv else None, busy0,
                          load_durations(args.durations))
        except Exception as exc:  # noqa: BLE001 - a progress line must never stop the run
            rec = {"t_s": round(time.time() - args.t0, 1), "monitor_error": repr(exc)[:300]}
        rec["kind"] = "progress"
        interval = interval_fields(prev, rec)
        if interval:
            rec["interval"] = interval
        if "input_video_s_done" in rec:
            prev = rec
        append(Path(args.jsonl), rec)


def cmd_final(args: argparse.Namespace) -> None:
    output = Path(args.output)
    busy0 = float(Path(args.busy0_file).read_text()) if args.busy0_file and Path(args.busy0_file).is_file() else None
    rec = {"kind": "final", "rc": args.rc}
    rec.update(figures(output, args.t0, args.t1, Path(args.gpu_csv) if args.gpu_csv else None, busy0,
                       load_durations(args.durations)))
    rec.update(rate_fields(read_jsonl(Path(args.jsonl)), rec))
    rec["cpu_model"] = cpu_model()
    if (output / STATS_FILE).is_file():
        stats = json.loads((output / STATS_FILE).read_text())
        rec["stats"] = {k: stats.get(k) for k in ("inputs", "clips_kept", "hours_kept", "wall_s", "driver_write")}
        rec["stats"]["stage_seconds"] = {k: v.get("seconds") for k, v in stats.get("stages", {}).items() if v.get("enabled")}
        rec["stats"]["stages_off"] = [k for k, v in stats.get("stages", {}).items() if not v.get("enabled")]
    if args.extra:
        rec.update(json.loads(args.extra))
    append(Path(args.jsonl), rec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config")
    c.add_argument("--base", required=True)
    c.add_argument("--overlay", default=None)
    c.add_argument("--out", required=True)
    c.add_argument("--samples-per-shard", type=int, default=8)
    c.add_argument("--keep-dedup", action="store_true", help="leave dedup as the base config has it")
    w = sub.add_parser("weights")
    w.add_argument("--config", required=True)
    for name in ("monitor", "final"):
        p = sub.add_parser(name)
        p.add_argument("--output", required=True, help="the run's output folder")
        p.add_argument("--jsonl", required=True, help="append the records here")
        p.add_argument("--t0", type=float, required=True, help="epoch seconds when vividhead curate started")
        p.add_argument("--gpu-csv", default=None)
        p.add_argument("--busy0-file", default=None, help="monitor writes the machine's busy CPU-s at start; final reads it")
        p.add_argument("--durations", default=None, help="JSON: fixture file name -> seconds of video")
        if name == "monitor":
            p.add_argument("--interval", type=float, default=20.0)
        else:
            p.add_argument("--t1", type=float, required=True, help="epoch seconds when vividhead curate ended")
            p.add_argument("--rc", type=int, default=None)
            p.add_argument("--extra", default=None, help="a JSON object merged into the record")
    args = ap.parse_args()
    {"config": cmd_config, "weights": cmd_weights, "monitor": cmd_monitor, "final": cmd_final}[args.cmd](args)


if __name__ == "__main__":
    main()
