"""The cluster launcher config (validated with Ray's own schema and validator), and a real local Ray
head on 127.0.0.1 that runs a curation job submitted with ``ray job submit``."""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
import yaml
from fast_config import write_fast_config
from netutil import descendants, kill_pids

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "ray_cluster.yaml"
VENV_BIN = Path(sys.executable).parent
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3", "p4d", "p4de", "p5")


def _schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_schema_and_validator(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    jsonschema.validate(cluster, _schema())  # the file as written
    prepared = prepare_config(copy.deepcopy(cluster))  # what `ray up` does: fill defaults, then validate
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


@pytest.mark.parametrize(
    "path, value",
    [
        (("available_node_types", "gpu_worker", "resources"), {"GPU": "one"}),
        (("available_node_types", "cpu_worker", "min_workers"), "zero"),
        (("not_a_ray_key",), True),
    ],
)
def test_validator_rejects_a_broken_copy(cluster, path, value):
    broken = copy.deepcopy(cluster)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _schema())


def test_cluster_has_cpu_and_gpu_worker_types_and_installs_what_curation_needs(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # the driver only
    workers = {name: t for name, t in types.items() if name != cluster["head_node_type"]}
    families = {name: t["node_config"]["InstanceType"].split(".")[0] for name, t in workers.items()}
    assert any(f in GPU_FAMILIES for f in families.values()), families
    assert any(f not in GPU_FAMILIES for f in families.values()), families
    assert sum(t["max_workers"] for t in workers.values()) <= cluster["max_workers"]
    setup = cluster["setup_commands"]
    index = lambda needle: next(i for i, c in enumerate(setup) if needle in c)  # noqa: E731
    assert "ffmpeg" in setup[index("apt-get install")]
    assert index("torch==2.13.0") < index("install -e ~/vividhead")
    assert "PIP_CONSTRAINT" in setup[index("install -e ~/vividhead")]
    assert cluster["file_mounts"]["~/vividhead"] == "."
    assert ".venv" in cluster["rsync_exclude"]


# -- a real head on loopback, a real `ray job submit` ------------------------------------------------


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.mark.timeout(480)
def test_ray_job_submit_runs_curation_on_a_local_head(tmp_path, video_dir, weights_dir):
    gcs_port, dashboard_port, client_port, agent_port = _free_ports(4)
    temp_dir = tempfile.mkdtemp(prefix="vhray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0",
        # Ray 2.60's token authentication: a fresh machine has no ~/.ray/auth_token yet (an in-process
        # ray.init() writes one; `ray start` does not), so the head and the client get one by env.
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # `python` in the job is this venv's
    )
    log = open(tmp_path / "head.log", "wb")
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
         f"--ray-client-server-port={client_port}", f"--dashboard-agent-listen-port={agent_port}",
         "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    api = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert head.poll() is None, "ray start exited:\n" + (tmp_path / "head.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{api}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # answering (401 without a token): up
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, "the dashboard did not come up in 180 s"
                time.sleep(0.5)

        # --working-dir: a copy of the package and the config, as `--working-dir .` ships the repo.
        work = tmp_path / "job"
        shutil.copytree(REPO / "curation", work / "curation", ignore=shutil.ignore_patterns("__pycache__"))
        write_fast_config(work / "curate.yaml")  # found by its relative path only in the shipped copy
        out = tmp_path / "out"
        clip = video_dir / "talk_retalking_face2.mp4"
        runtime_env = {"env_vars": {"VIVIDHEAD_WEIGHTS_DIR": str(weights_dir), "VIVIDHEAD_OFFLINE": "1"}}
        submit = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "submit", "--working-dir", str(work), "--runtime-env-json", json.dumps(runtime_env),
             "--", "python", "-m", "curation", str(clip), "--output", str(out), "--config", "curate.yaml", "--quiet"],
            env={**env, "RAY_API_SERVER_ADDRESS": api}, capture_output=True, timeout=360,
        )
        text = submit.stdout.decode(errors="replace") + submit.stderr.decode(errors="replace")
        assert submit.returncode == 0, text[-4000:]
        assert "succeeded" in text
        rows = pq.read_table(out / "manifest.parquet").to_pylist()
        assert [(r["source_id"], r["status"]) for r in rows] == [("talk_retalking_face2", "kept")]
        assert (out / "shards" / f"{rows[0]['shard']:05d}.tar").stat().st_size > 10_000
        assert json.loads((out / "stats.json").read_text())["clips_kept"] == 1
    finally:
        pids = descendants(head.pid)
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        kill_pids(pids + [head.pid])  # by PID: never `ray stop`, other Rays share this machine
        head.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
