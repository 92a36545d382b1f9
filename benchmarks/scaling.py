"""Scale-out and memory: the same curation on 1 and 2 CPU workers, and peak RSS on 10x the inputs.

    VIVIDHEAD_WEIGHTS_DIR=../shared/fixtures/weights .venv/bin/python benchmarks/scaling.py scaling \
        [--inputs ../shared/fixtures/media/video] [--config fast | examples/curate_offline.yaml]
    VIVIDHEAD_WEIGHTS_DIR=../shared/fixtures/weights .venv/bin/python benchmarks/scaling.py memory \
        [--inputs ../shared/fixtures/media/video] [--copies 10] [--config fast | ...]

``scaling`` runs the pipeline twice in fresh processes: a local Ray with 1 CPU pinned to 1 core
(``sched_setaffinity``, inherited by Ray's workers and FFmpeg), then 2 CPUs on 2 cores. It prints
wall seconds, clips/s, input video-hours per wall hour per core, the speed-up ratio 1 -> 2, and the
CPU time the process tree used (sampled from /proc every 0.25 s, so a lower bound), whose
video-hours per CPU-hour holds even when other jobs share the cores (wall-clock figures do not).

``memory`` runs the pipeline on the input set once and on ``--copies`` copies of it (a URL list with
distinct source ids, dedup off), sampling the RSS of the driver and of its whole process tree (Ray's
workers and FFmpeg included) every 0.25 s. Bounded memory (Ray Data's backpressure plus the streaming
shard writer) shows as a peak that does not grow with the input count.

``--config fast`` (the default) is probe + normalize + write only (the other stages off, no scene
detection): the FFmpeg-bound core of the CPU stages, and affordable 10x on a 2-core machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm")


# -- the measured run (child process) ----------------------------------------------------------------


def fast_config_dict() -> dict:
    """probe, dedup off, scene_split without detection, normalize, write; every other stage off."""
    from vividhead.curation.config import SECTIONS

    raw = {name: {"enabled": False} for name in SECTIONS if name not in ("run", "probe", "scene_split", "normalize", "write")}
    raw["scene_split"] = {"detector": "none"}
    return raw


def child(args: argparse.Namespace) -> None:
    """One run in this process: pin to ``--cores``, start Ray with ``--cpus``, print a JSON line."""
    import ray
    import yaml

    from vividhead.curation.config import config_from_dict
    from vividhead.curation.pipeline import run_curation

    os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    raw = fast_config_dict() if args.config == "fast" else yaml.safe_load(Path(args.config).read_text()) or {}
    if args.copies > 1:
        raw["dedup"] = {**(raw.get("dedup") or {}), "enabled": False}
    raw.setdefault("run", {})["cache_dir"] = os.path.join(args.output, "_cache")
    cfg = config_from_dict(raw)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    start = time.perf_counter()
    result = run_curation([args.input_list], os.path.join(args.output, "out"), cfg)
    wall = time.perf_counter() - start
    rows = result.manifest.to_pylist()
    per_input = {r["input_id"]: r["source_duration_s"] or 0.0 for r in rows}
    print("RESULT " + json.dumps({
        "wall_s": wall,
        "inputs": len(per_input),
        "clips_kept": result.stats["clips_kept"],
        "video_s": sum(per_input.values()),
        "hours_kept": result.stats["hours_kept"],
    }), flush=True)
    ray.shutdown()


# -- the harness (parent process) ---------------------------------------------------------------------


def tree_sample(pid: int) -> tuple[int, int, dict[int, float]]:
    """One /proc sample of ``pid``'s process tree.

    Returns:
        (RSS of ``pid``, summed RSS of the tree) in bytes, and CPU seconds per process so far:
        ``utime + stime`` for every process except FFmpeg's, plus ``cutime + cstime`` for Ray's worker
        processes (``ray::...``), which holds the FFmpeg children they waited for. Each CPU-second
        is counted once: FFmpeg through its worker, a worker through itself.
    """
    tick = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[str, list[str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm_part, rest = stat.read_text().rsplit(")", 1)
            fields = rest.split()
            cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        p = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(p)
        info[p] = (cmd, fields)
    total, cpu, todo = 0, {}, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        if p not in info:
            continue
        cmd, f = info[p]
        total += int(f[21]) * page  # rss: field 24 of /proc/PID/stat
        if Path(cmd).name in ("ffmpeg", "ffprobe"):
            continue
        seconds = (int(f[11]) + int(f[12])) / tick  # utime + stime
        if cmd.startswith("ray::"):
            seconds += (int(f[13]) + int(f[14])) / tick  # cutime + cstime: its FFmpeg children
        cpu[p] = seconds
    rss_pid = int(info[pid][1][21]) * page if pid in info else 0
    return rss_pid, total, cpu


def input_list(paths: list[Path], copies: int, folder: Path) -> Path:
    """A CSV URL list: every path ``copies`` times, with distinct source ids."""
    listing = folder / "inputs.csv"
    with open(listing, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["url", "source_id"])
        for k in range(copies):
            for p in paths:
                writer.writerow([str(p), f"{p.stem}_c{k:02d}" if copies > 1 else p.stem])
    return listing


def measure(paths: list[Path], config: str, cpus: int, cores: str, copies: int = 1) -> dict:
    """Run :func:`child` in a fresh process and return its result plus peak RSS (MiB)."""
    with tempfile.TemporaryDirectory(prefix="vh-scaling-") as tmp:
        listing = input_list(paths, copies, Path(tmp))
        cmd = [sys.executable, __file__, "_run", "--input-list", str(listing), "--output", tmp,
               "--config", config, "--cpus", str(cpus), "--cores", cores, "--copies", str(copies)]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        peak_driver = peak_tree = 0
        cpu_seen: dict[int, float] = {}
        while proc.poll() is None:
            driver, tree, cpu = tree_sample(proc.pid)
            peak_driver, peak_tree = max(peak_driver, driver), max(peak_tree, tree)
            for p, seconds in cpu.items():
                cpu_seen[p] = max(cpu_seen.get(p, 0.0), seconds)
            time.sleep(0.25)
        out = proc.stdout.read()
        line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"run failed (exit {proc.returncode}): {out[-2000:]}")
        result = json.loads(line[len("RESULT "):])
        result.update(cpus=cpus, copies=copies, peak_driver_rss_mib=peak_driver / 2**20, peak_tree_rss_mib=peak_tree / 2**20,
                      cpu_s=sum(cpu_seen.values()))
        return result


def per_core(r: dict) -> str:
    clips_s = r["clips_kept"] / r["wall_s"]
    vh_per_h = (r["video_s"] / 3600) / (r["wall_s"] / 3600)
    return (f"{r['cpus']} CPU: {r['wall_s']:.1f} s wall, {r['inputs']} inputs ({r['video_s']:.0f} s of video), "
            f"{r['clips_kept']} clips kept | {clips_s:.3f} clips/s ({clips_s / r['cpus']:.3f} per core) | "
            f"{vh_per_h:.1f} video-hours/hour ({vh_per_h / r['cpus']:.1f} per core) | "
            f"{r['cpu_s']:.0f} CPU-s used: {r['video_s'] / r['cpu_s']:.2f} video-hours per CPU-hour")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["scaling", "memory", "_run"])
    ap.add_argument("--inputs", default=str(REPO / ".." / "shared" / "fixtures" / "media" / "video"))
    ap.add_argument("--config", default="fast", help="a curate YAML (e.g. examples/curate_offline.yaml), or 'fast' (default)")
    ap.add_argument("--copies", type=int, default=10)
    # for _run
    ap.add_argument("--input-list")
    ap.add_argument("--output")
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--cores", default="0")
    args = ap.parse_args()
    if args.mode == "_run":
        child(args)
        return
    paths = sorted(p.resolve() for p in Path(args.inputs).rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs at least 2 cores")
    load = os.getloadavg()[0]
    if args.mode == "scaling":
        config = args.config
        one = measure(paths, config, cpus=1, cores="0")
        two = measure(paths, config, cpus=2, cores="0,1")
        print(f"config {config}, {len(paths)} inputs, load average at start {load:.1f}")
        print(per_core(one))
        print(per_core(two))
        print(f"speed-up 1 -> 2 CPU workers: {one['wall_s'] / two['wall_s']:.2f}x (ideal 2.00x)")
    else:
        config = args.config
        base = measure(paths, config, cpus=2, cores="0,1", copies=1)
        big = measure(paths, config, cpus=2, cores="0,1", copies=args.copies)
        print(f"config {config}, load average at start {load:.1f}")
        for r in (base, big):
            print(f"{r['copies']:>3}x ({r['inputs']} inputs, {r['video_s'] / 60:.1f} min of video, {r['wall_s']:.0f} s): "
                  f"peak RSS driver {r['peak_driver_rss_mib']:.0f} MiB, driver + Ray workers + FFmpeg {r['peak_tree_rss_mib']:.0f} MiB")
        print(f"peak RSS ratio {args.copies}x / 1x: driver {big['peak_driver_rss_mib'] / base['peak_driver_rss_mib']:.2f}, "
              f"tree {big['peak_tree_rss_mib'] / base['peak_tree_rss_mib']:.2f} (inputs x{args.copies})")


if __name__ == "__main__":
    main()
