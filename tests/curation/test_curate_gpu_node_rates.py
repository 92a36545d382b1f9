"""``benchmarks/curate_gpu_node.py``'s rate fields: the rate past start-up, over the last 120 s, and
per progress interval, from progress records like the ones a run appends."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def node():
    sys.path.insert(0, str(BENCH))  # the script imports curation_throughput from its own folder
    try:
        spec = importlib.util.spec_from_file_location("curate_gpu_node", BENCH / "curate_gpu_node.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH))


def progress(t, video, inputs, busy=0.5):
    return {"kind": "progress", "t_s": t, "input_video_s_done": video, "inputs_done": inputs,
            "node_cpu_busy_share": busy}


def test_steady_rate_starts_at_the_first_line_with_inputs_done(node):
    lines = [{"kind": "env"}, progress(20.0, 0, 0), progress(40.0, 0, 0), progress(60.0, 100.0, 10),
             progress(100.0, 500.0, 40), progress(200.0, 1500.0, 120), {"t_s": 210.0, "monitor_error": "x"}]
    final = {"kind": "final", "t_s": 260.0, "input_video_s_done": 2300.0}
    out = node.rate_fields(lines, final)
    assert out["steady_from_t_s"] == 60.0
    assert out["steady_video_hours_per_node_hour"] == pytest.approx((2300 - 100) / 200, abs=0.01)
    assert out["steady_node_hours_for_10000_video_hours"] == pytest.approx(10000 / 11.0, abs=0.1)
    # last 120 s: from the last line at least 120 s before the end (t = 100)
    assert out["last_120s_video_hours_per_node_hour"] == pytest.approx(1800 / 160, abs=0.01)


def test_no_inputs_done_before_the_end_gives_no_steady_rate(node):
    out = node.rate_fields([progress(20.0, 0, 0)], {"t_s": 30.0, "input_video_s_done": 50.0})
    assert "steady_video_hours_per_node_hour" not in out
    assert node.rate_fields([], {"t_s": 30.0, "input_video_s_done": 0.0}) == {}


def test_interval_rate_and_busy_share(node):
    prev, rec = progress(100.0, 500.0, 40, busy=0.7), progress(120.0, 900.0, 70, busy=0.6)
    out = node.interval_fields(prev, rec)
    assert out["from_t_s"] == 100.0
    assert out["video_hours_per_node_hour"] == 20.0
    assert out["node_cpu_busy_share"] == pytest.approx((0.6 * 120 - 0.7 * 100) / 20)
    assert node.interval_fields(None, rec) is None
