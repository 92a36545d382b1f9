"""Curation throughput on the fixture videos against a plain FFmpeg decode of the same inputs.

    VIVIDHEAD_WEIGHTS_DIR=../shared/fixtures/weights .venv/bin/python benchmarks/curation_throughput.py \
        [--inputs ../shared/fixtures/media/video] [--config examples/curate_offline.yaml] [--cpus 2] \
        [--keep OUT_DIR] [--baseline-manifest OLD_OUT/manifest.parquet] [--repeat N]

Prints input video-seconds processed per CPU-second (wall time x CPUs given to Ray) for both, and
the ratio pipeline time / decode time, and the CPU seconds the whole machine was busy during the
pipeline (``/proc/stat``; compare with wall time x CPUs to see idle cores). The decode baseline runs in the same process, one FFmpeg
process per CPU, so both use the same cores (median of three decode runs: it varies by 30% between runs). Per stage, video-seconds per CPU-second: the seconds of
video of the rows the stage ran on (the source's for probe and scene_split, the clip's after) over
the stage's seconds summed over rows (the manifest's ``timings``). The load average of the machine
is printed with the figures (other jobs inflate both runs, not always equally).

CPU seconds, steadier than wall time on a shared machine: ``decode_cpu_s`` (the FFmpeg processes of
one decode run) and ``pipeline_cpu_s``: this process and every process it started, Ray's included,
from ``ray.init`` to the exit of the last Ray process (:class:`TreeCpu`: a ``cpuacct`` cgroup).
``ratio_cpu`` = pipeline CPU-s / decode CPU-s, the ratio the wall-time one tends to when the CPUs are
kept busy; ``stage_cpu_s`` sums each stage's ``cpu:<stage>`` timings (its worker's CPU time and
the children it waited for) over rows; ``pipeline_cpu_s`` less their sum is Ray, the driver and idle
actors.

``--baseline-manifest``: the manifest of an earlier run on the same inputs (e.g. before a change,
kept with ``--keep``); every clip whose status or rejection reason differs is listed.
``--baseline-report``: the JSON an earlier run of this script printed (e.g. with
``run: {chain_stages: false}`` in the config, or before a change): the CPU seconds as ratios to it;
if it had another ``input_video_s`` (another ``--repeat``), also the split into a fixed cost per run
and a marginal cost per input-second (``marginal_vs_baseline_report``).

``--repeat N``: the inputs N times over (:func:`repeat_inputs`: links ``r<k>_<name>`` in a temporary
folder, byte-identical copies), with dedup off in the run's config for N > 1 (:func:`without_dedup`)
and the decode baseline over the same N-fold inputs, so that ``ratio_cpu`` stays like for like. Run at
N = 1 and at N > 1, the difference is the CPU per input-second past the per-run start-up (Ray's, the
driver's, the actors'), which a long job pays once. With ``--baseline-manifest`` of an N = 1 run,
every copy of a source is compared with that source's decisions (:func:`decision_changes`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


COPY_PREFIX = re.compile(r"^r\d+_")  # ``r<k>_<name>``: the k-th copy of input ``name``


def copy_name(name: str, k: int, n: int) -> str:
    """The k-th (1-based) of n copies of the input file ``name``: ``r<k>_<name>``, k zero-padded to
    the width of n (as ``seq -w``; ``run_curate_gpu_node.sh`` links its inputs under the same names)."""
    return f"r{k:0{len(str(n))}d}_{name}"


def source_name(name: str) -> str:
    """The input file name a copy was made from (:func:`copy_name` undone); other names unchanged."""
    return COPY_PREFIX.sub("", name, count=1)


def copy_tag(name: str) -> str:
    """``r<k>_`` of a copy's name, ``""`` for an input that is no copy."""
    m = COPY_PREFIX.match(name)
    return m.group(0) if m else ""


def repeat_inputs(paths: list[Path], n: int, folder: Path) -> list[Path]:
    """``n`` copies of every input, as hard links (symbolic links across file systems) named
    :func:`copy_name` in ``folder``; the copies in the order the pipeline lists a folder (by name)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(1, n + 1):
        for p in paths:
            dst = folder / copy_name(p.name, k, n)
            try:
                os.link(p, dst)
            except OSError:
                dst.symlink_to(Path(p).resolve())
            out.append(dst)
    return sorted(out)


def without_dedup(cfg: dict | None) -> dict:
    """A copy of a raw config (the YAML's mapping) with dedup off: repeated inputs are byte-identical,
    and dedup would reject every copy but the first."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in (cfg or {}).items()}
    out["dedup"] = {**(out.get("dedup") or {}), "enabled": False}
    return out


def ffprobe_duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, timeout=60)
    return float(out.stdout.strip() or 0)


def own_cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its finished, reaped descendants."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def process_kind(pid: str, title: str) -> str:
    """A short name for a process of the run: this driver, a Ray worker (by its title), Ray's own
    daemons, FFmpeg."""
    if pid == str(os.getpid()):
        return "driver"
    name = Path(title.split()[0]).name if title else "?"
    if title.startswith("ray::"):
        return title.split()[0][:48]
    if "python" in name:
        for part in title.split()[1:3]:
            if part.endswith(".py"):
                return "ray:" + Path(part).name
        return "python"
    return name


class TreeCpu:
    """CPU seconds of this process and every process it starts from now on, Ray's workers included.

    A cgroup-v1 ``cpuacct`` group of its own (Linux, root) counts every descendant exactly, however
    Ray starts, parents and kills its workers; it is removed by :meth:`close`. Without one (no
    permission, cgroup v2 only) it falls back to ``getrusage`` of this process and its reaped
    children, which misses Ray's workers (``method`` says which).
    """

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self) -> None:
        self.group: Path | None = self.ROOT / f"vividhead_bench_{os.getpid()}"
        try:
            self.group.mkdir()
            (self.group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            self.group = None
        self.method = "cgroup cpuacct" if self.group else "getrusage (misses Ray workers)"
        self.start = self.now()
        self.last: dict[tuple[str, str], tuple[str, float]] = {}  # (pid, start tick) -> (kind, own CPU s)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        if self.group:
            self._sampler.start()

    def _sample(self) -> None:
        """Once a second: each process of the group, its kind and own CPU seconds (for :meth:`by_kind`)."""
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(1.0):
            for pid in (self.group / "cgroup.procs").read_text().split():
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                except OSError:
                    continue
                fields = stat.rsplit(")", 1)[1].split()
                key = (pid, fields[19])
                # An exited, not yet reaped process has no command line: it keeps the kind it had.
                kind = self.last[key][0] if not title and key in self.last else process_kind(pid, title)
                self.last[key] = (kind, (int(fields[11]) + int(fields[12])) / tick)

    def by_kind(self) -> dict[str, float]:
        """Own CPU seconds per kind of process (sampled once a second: a process's last second and
        the short-lived FFmpeg processes are missing; the stage table counts those)."""
        self._stop.set()
        out: dict[str, float] = {}
        for kind, seconds in self.last.values():
            out[kind] = out.get(kind, 0.0) + seconds
        return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}

    def count_by_kind(self) -> dict[str, int]:
        """Processes seen per kind (each process once, by pid and start time)."""
        out: dict[str, int] = {}
        for kind, _ in self.last.values():
            out[kind] = out.get(kind, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def now(self) -> float:
        if self.group:
            return int((self.group / "cpuacct.usage").read_text()) / 1e9
        return own_cpu_s()

    def seconds(self, wait_s: float = 30.0) -> float:
        """CPU seconds since construction, once every other process of the group has exited (up
        to ``wait_s``: Ray's processes stop shortly after ``ray.shutdown``)."""
        deadline = time.monotonic() + wait_s
        while self.group and time.monotonic() < deadline and self.others():
            time.sleep(0.2)
        return self.now() - self.start

    def others(self) -> int:
        if not self.group:
            return 0
        procs = (self.group / "cgroup.procs").read_text().split()
        return sum(1 for pid in procs if pid != str(os.getpid()))

    def close(self) -> None:
        if self.group:
            (self.ROOT / "cgroup.procs").write_text(str(os.getpid()))
            try:
                self.group.rmdir()
            except OSError:  # a process outlived the wait: leave the empty group for the kernel
                pass


def decode_all(paths: list[Path], cpus: int) -> float:
    """Wall seconds to decode every input's video and audio with FFmpeg (null muxer), ``cpus`` at a time."""
    def one(p: Path) -> None:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(p), "-f", "null", "-"], check=False, timeout=600)

    start = time.perf_counter()
    with ThreadPoolExecutor(cpus) as pool:
        list(pool.map(one, paths))
    return time.perf_counter() - start


def cpu_busy_s() -> float | None:
    """CPU seconds the whole machine spent busy so far (``/proc/stat``: all but idle and iowait), or None off Linux."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


INPUT_LEVEL = ("probe", "dedup", "scene_split")  # stages that see the whole source video


def stage_rates(manifest) -> dict[str, dict[str, float]]:
    """Per stage: CPU seconds summed over rows, video seconds of those rows, and their ratio."""
    out: dict[str, dict[str, float]] = {}
    seen_inputs: set[tuple[str, str]] = set()
    for row in manifest.to_pylist():
        for stage, seconds in json.loads(row.get("timings") or "{}").items():
            if stage.startswith("cpu:"):
                continue
            if stage in INPUT_LEVEL:
                if (stage, row["input_id"]) in seen_inputs:
                    continue
                seen_inputs.add((stage, row["input_id"]))
                video = row.get("source_duration_s") or 0.0
            else:
                video = row.get("duration_s") or 0.0
            rec = out.setdefault(stage, {"cpu_s": 0.0, "video_s": 0.0})
            rec["cpu_s"] += seconds
            rec["video_s"] += video
    for rec in out.values():
        rec["video_s_per_cpu_s"] = round(rec["video_s"] / rec["cpu_s"], 2) if rec["cpu_s"] else None
        rec["cpu_s"], rec["video_s"] = round(rec["cpu_s"], 2), round(rec["video_s"], 2)
    return out


def stage_cpu_s(manifest) -> dict[str, float]:
    """Per stage, its CPU seconds summed over rows (the ``cpu:<stage>`` keys of ``timings``)."""
    out: dict[str, float] = {}
    for row in manifest.to_pylist():
        for key, seconds in json.loads(row.get("timings") or "{}").items():
            if key.startswith("cpu:"):
                out[key[4:]] = out.get(key[4:], 0.0) + seconds
    return {k: round(v, 2) for k, v in out.items()}


def decision_changes(manifest, baseline_path: str) -> list[dict]:
    """Clips whose (status, reason) differ from the baseline manifest's, keyed by input file name and
    clip index. Copies of an input (:func:`copy_name`, from ``--repeat``) are compared one by one with
    that input's rows in the baseline (an N = 1 run): each copy must give the source's decisions."""
    import pyarrow.parquet as pq

    def split(r: dict) -> tuple[str, tuple]:
        name = Path(r.get("url") or r["input_id"]).name
        return copy_tag(name), (source_name(name), r.get("clip_index"))

    old: dict[tuple, dict] = {}
    for r in pq.read_table(baseline_path).to_pylist():
        old[split(r)[1]] = r
    copies: dict[str, dict[tuple, dict]] = {}
    for r in manifest.to_pylist():
        tag, key = split(r)
        copies.setdefault(tag, {})[key] = r
    changes = []
    for tag, rows in sorted(copies.items()):
        for key, r in rows.items():
            o = old.get(key)
            if o is None or (o["status"], o["reason"]) != (r["status"], r["reason"]):
                changes.append({"clip": (tag + key[0], key[1]), "before": o and (o["status"], o["stage"], o["reason"]),
                                "after": (r["status"], r["stage"], r["reason"])})
        changes += [{"clip": (tag + k[0], k[1]), "before": (o["status"], o["stage"], o["reason"]), "after": None}
                    for k, o in old.items() if k not in rows]
    return changes


def vs_baseline(report: dict, base: dict) -> dict:
    """This run's CPU seconds (pipeline, decode, stages, outside them, each stage) over the
    baseline report's: below 1 is cheaper. Also both reports' ``decode_cpu_s``, to see that the
    machine gave the same decode cost to both."""
    keys = ("pipeline_cpu_s", "stage_cpu_s_total", "outside_stages_cpu_s", "decode_cpu_s")
    out = {k: round(report[k] / base[k], 3) for k in keys if base.get(k)}
    out["stage_cpu_s"] = {k: round(v / base["stage_cpu_s"][k], 3)
                          for k, v in report["stage_cpu_s"].items() if base.get("stage_cpu_s", {}).get(k)}
    out["baseline_pipeline_cpu_s"] = base.get("pipeline_cpu_s")
    return out


def marginal(report: dict, base: dict) -> dict | None:
    """Fixed and marginal CPU from two runs of different input seconds (e.g. ``--repeat`` 1 and 4):
    the marginal CPU-s per input-second (pipeline, decode, stages, outside them, each stage) =
    difference of CPU-s / difference of input seconds; the fixed CPU-s per run = the smaller run's CPU-s
    less its input seconds at the marginal rate; the marginal ``ratio_cpu`` = difference of pipeline
    CPU-s / difference of decode CPU-s. None when both runs had the same input seconds."""
    small, big = sorted((base, report), key=lambda r: r["input_video_s"])
    dv = big["input_video_s"] - small["input_video_s"]
    if dv < 1.0:
        return None
    keys = ("pipeline_cpu_s", "decode_cpu_s", "stage_cpu_s_total", "outside_stages_cpu_s")
    per_s = {k: (big[k] - small[k]) / dv for k in keys if k in big and k in small}
    stages = {k: (v - small["stage_cpu_s"][k]) / dv for k, v in big.get("stage_cpu_s", {}).items()
              if k in small.get("stage_cpu_s", {})}
    dd = big["decode_cpu_s"] - small["decode_cpu_s"]
    return {
        "input_video_s": [small["input_video_s"], big["input_video_s"]],
        "cpu_s_per_input_s": {k: round(v, 4) for k, v in per_s.items()},
        "fixed_cpu_s": {k: round(small[k] - v * small["input_video_s"], 1) for k, v in per_s.items()},
        "stage_cpu_s_per_input_s": {k: round(v, 4) for k, v in stages.items()},
        "stage_fixed_cpu_s": {k: round(small["stage_cpu_s"][k] - v * small["input_video_s"], 2) for k, v in stages.items()},
        "ratio_cpu": round((big["pipeline_cpu_s"] - small["pipeline_cpu_s"]) / dd, 2) if dd > 0 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", default=str(REPO / ".." / "shared" / "fixtures" / "media" / "video"))
    ap.add_argument("--config", default=str(REPO / "examples" / "curate_offline.yaml"))
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", default=None, help="write the run's output here (default: a temporary folder)")
    ap.add_argument("--baseline-manifest", default=None, help="list decisions that differ from this manifest")
    ap.add_argument("--baseline-report", default=None,
                    help="the JSON this script printed for an earlier run (e.g. before a change): "
                         "print this run's CPU seconds as ratios to it")
    ap.add_argument("--repeat", type=int, default=1,
                    help="the inputs N times over (links r<k>_<name>, dedup off for N > 1), the decode baseline too")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    import ray

    from vividhead.config import read_yaml
    from vividhead.curation.config import config_from_dict, load_config
    from vividhead.curation.pipeline import run_curation

    links = tempfile.TemporaryDirectory(prefix="vh_repeat_")
    paths = sorted(p for p in Path(args.inputs).rglob("*") if p.suffix.lower() in (".mp4", ".mkv", ".mov", ".webm"))
    source_video_s = sum(ffprobe_duration(p) for p in paths)
    video_s = source_video_s * args.repeat
    sources, run_input = len(paths), args.inputs
    cfg = load_config(args.config)
    if args.repeat > 1:
        paths = repeat_inputs(paths, args.repeat, Path(links.name))
        run_input = links.name
        cfg = config_from_dict(without_dedup(read_yaml(args.config)))
    decode_runs = []
    for _ in range(3):  # it varies run to run: the median wall time, and the CPU time of each run
        cpu0 = own_cpu_s()
        decode_runs.append((decode_all(paths, args.cpus), own_cpu_s() - cpu0))
    decode_s = statistics.median(w for w, _ in decode_runs)
    decode_cpu_s = statistics.median(c for _, c in decode_runs)
    tree = TreeCpu()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        busy_before, start = cpu_busy_s(), time.perf_counter()
        result = run_curation([run_input], args.keep or tmp, cfg)
        pipe_s = time.perf_counter() - start
        busy_after = cpu_busy_s()
    ray.shutdown()
    pipe_cpu_s = tree.seconds()
    left = tree.others()
    by_kind = tree.by_kind()
    count_kind = tree.count_by_kind()
    tree.close()
    links.cleanup()
    stage_cpu = stage_cpu_s(result.manifest)
    report = {
        "repeat": args.repeat,
        "sources": sources,
        "inputs": len(paths),
        "source_video_s": round(source_video_s, 2),
        "input_video_s": round(video_s, 2),
        "dedup": "off (repeated inputs)" if args.repeat > 1 else "as in the config",
        "cpus": args.cpus,
        "clips_kept": result.stats["clips_kept"],
        "decode_wall_s": round(decode_s, 2),
        "pipeline_wall_s": round(pipe_s, 2),
        "decode_video_s_per_cpu_s": round(video_s / (decode_s * args.cpus), 3),
        "pipeline_video_s_per_cpu_s": round(video_s / (pipe_s * args.cpus), 3),
        "ratio_pipeline_over_decode": round(pipe_s / decode_s, 2),
        "decode_cpu_s": round(decode_cpu_s, 2),
        "pipeline_cpu_s": round(pipe_cpu_s, 1),  # this process and all it started (subreaper), Ray's included
        "ratio_cpu": round(pipe_cpu_s / decode_cpu_s, 2),
        "cpu_accounting": {"method": tree.method, "processes_left": left},
        "cpu_s_by_process_kind": by_kind,
        "processes_by_kind": count_kind,
        "stage_cpu_s": stage_cpu,
        "stage_cpu_s_total": round(sum(stage_cpu.values()), 1),
        "outside_stages_cpu_s": round(pipe_cpu_s - sum(stage_cpu.values()), 1),  # Ray, driver, idle actors
        # all processes, Ray's included: busy / (wall x CPUs) near 1 means the CPUs were full
        "machine_cpu_busy_s": round(busy_after - busy_before, 1) if busy_before is not None else None,
        "stage_seconds": {k: v["seconds"] for k, v in result.stats["stages"].items() if v["enabled"]},
        "stage_video_s_per_cpu_s": stage_rates(result.manifest),
        "driver_write": result.stats.get("driver_write"),
        "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    if args.baseline_manifest:
        report["decision_changes"] = decision_changes(result.manifest, args.baseline_manifest)
    if args.baseline_report:
        base = json.loads(Path(args.baseline_report).read_text())
        report["vs_baseline_report"] = vs_baseline(report, base)
        split = marginal(report, base)
        if split:
            report["marginal_vs_baseline_report"] = split
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
