"""CPU seconds that Ray and the stage actors cost with no stage work: what a curation run pays
besides its stages.

    VIVIDHEAD_WEIGHTS_DIR=../shared/fixtures/weights VIVIDHEAD_OFFLINE=1 .venv/bin/python \
        benchmarks/curation_ray_overhead.py [--cpus 2] [--idle-s 30] [--config examples/curate_offline.yaml]

Three measurements, each with :class:`curation_throughput.TreeCpu` (this process and every process
it starts, Ray's included):

* ``ray_idle``: ``ray.init`` as ``curation_throughput.py`` calls it (``start_cpu_s``), then
  ``--idle-s`` seconds with nothing to run (``idle_cpu_s_per_s``);
* ``ray_data_sleep``: a Ray Data job of 16 rows through a pool of 1-2 actors that sleep 3 s a row
  (what Ray Data's executor, its system actors and the actors cost while the stages would work),
  CPU seconds of the whole job, of the driver alone, and by process kind;
* ``chain_actor_start``: in a fresh Python process, what one chain actor of ``--config`` pays before
  its first row: ``import ray.data``, the stage modules, and ``setup()`` of every stage in the chain.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from curation_throughput import TreeCpu  # noqa: E402

#: Run in a fresh interpreter: the CPU seconds of a chain actor's imports and set-up.
ACTOR_START = """
import json, resource, sys
def cpu():
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime
out = {}
t = cpu(); import ray.data; out["import_ray_data"] = cpu() - t
t = cpu()
from vividhead.curation.config import load_config
from vividhead.curation.frame_group import chain_stages, group_frame_stages
from vividhead.curation.pipeline import build_stages
from vividhead.curation.stage import Stage
out["import_stages"] = cpu() - t
stages = [s for s in build_stages(load_config(sys.argv[1])) if isinstance(s, Stage)]
chains = [s for s in chain_stages(group_frame_stages(stages[1:])) if hasattr(s, "stages")]
t = cpu()
for chain in chains:
    chain.setup()
out["setup"] = cpu() - t
out["chain"] = [c.name for c in chains]
print(json.dumps(out))
"""


def own_cpu_s() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


class _Sleep:
    """Ray Data callable class: one row in, the same row out after 3 s."""

    def __call__(self, row: dict) -> list[dict]:
        time.sleep(3.0)
        return [row]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--idle-s", type=float, default=30.0)
    ap.add_argument("--config", default=str(REPO / "examples" / "curate_offline.yaml"))
    args = ap.parse_args()

    import ray
    import ray.data

    report: dict = {"cpus": args.cpus}
    tree = TreeCpu()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    started = tree.now()
    time.sleep(args.idle_s)
    idle = tree.now() - started
    report["ray_idle"] = {"start_cpu_s": round(started - tree.start, 2), "idle_s": args.idle_s,
                          "idle_cpu_s_per_s": round(idle / args.idle_s, 4)}

    ray.data.DataContext.get_current().enable_progress_bars = False
    before, driver_before, wall = tree.now(), own_cpu_s(), time.perf_counter()
    ds = ray.data.from_items([{"i": i} for i in range(16)], override_num_blocks=16)
    ds = ds.flat_map(_Sleep, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=args.cpus), num_cpus=1)
    rows = sum(1 for _ in ds.iter_rows())
    report["ray_data_sleep"] = {"rows": rows, "wall_s": round(time.perf_counter() - wall, 1),
                                "cpu_s": round(tree.now() - before, 2),
                                "driver_cpu_s": round(own_cpu_s() - driver_before, 2)}
    ray.shutdown()
    tree.seconds()
    report["ray_data_sleep"]["cpu_s_by_process_kind_whole_run"] = tree.by_kind()
    tree.close()

    out = subprocess.run([sys.executable, "-c", ACTOR_START, args.config], capture_output=True, text=True,
                         check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    start = json.loads(out.stdout.strip().splitlines()[-1])
    start["total_cpu_s"] = round(sum(v for k, v in start.items() if k != "chain"), 2)
    report["chain_actor_start"] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in start.items()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
