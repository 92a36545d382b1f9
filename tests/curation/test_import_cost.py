"""The stage list and the pipeline's plan import no model library: the driver (config load and
validation, stage objects, the per-row operator plan) and a worker that unpickles stages before
their ``setup()`` load torch, SciPy, OpenCV or MediaPipe only where a stage that needs them runs.

Each check runs in a fresh interpreter, since this test process has those libraries loaded already.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Libraries no stage module may import at module level (each costs 0.1-0.9 CPU-s to import).
HEAVY = ("torch", "scipy", "cv2", "mediapipe", "transformers", "onnxruntime", "rtmlib", "silero_vad",
         "scenedetect", "librosa")

_CHECK = """
import sys
heavy = {heavy!r}
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))
assert not loaded, "{where} imported " + ", ".join(loaded)
"""

_DRIVER = """
import pickle
from vividhead.curation.config import load_config
from vividhead.curation.frame_group import chain_stages, group_frame_stages
from vividhead.curation.pipeline import build_stages
from vividhead.curation.stage import Stage
from vividhead.curation.stage_list import STAGES

cfg = load_config({config!r})
stages = build_stages(cfg)
assert [s.name for s in stages] == [c.name for c in STAGES]
per_row = [s for s in stages[:-1] if isinstance(s, Stage) and s.cfg.enabled]
plan = chain_stages(group_frame_stages(per_row))
open({out!r}, "wb").write(pickle.dumps(plan))
"""


def _run(code: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("config", [None, "examples/curate_offline.yaml"], ids=["defaults", "offline"])
def test_plan_and_unpickled_stages_import_no_model_library(tmp_path, config):
    plan = tmp_path / "plan.pkl"
    # The driver: load and validate the config, build every stage and the per-row operator plan.
    _run(_DRIVER.format(config=config and str(REPO / config), out=str(plan))
         + _CHECK.format(heavy=HEAVY, where="the driver's plan"), tmp_path)
    # A worker: the stage objects as Ray ships them (pickled by reference), before setup().
    _run(f"import pickle\npickle.loads(open({str(plan)!r}, 'rb').read())\n"
         + _CHECK.format(heavy=HEAVY, where="unpickling the stages"), tmp_path)


def test_invalid_config_still_fails_at_load_without_model_libraries(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("asd:\n  precision: fp16\nsyncnet:\n  batch_size: 0\n")
    code = f"""
from vividhead.curation.config import ConfigError, load_config
try:
    load_config({str(bad)!r})
except ConfigError as exc:
    assert "asd.precision" in str(exc), exc
else:
    raise AssertionError("asd.precision: fp16 was accepted")
""" + _CHECK.format(heavy=HEAVY, where="config validation")
    _run(code, tmp_path)
