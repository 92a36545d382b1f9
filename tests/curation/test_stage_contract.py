"""Every stage of the stage list keeps the stage contract (:mod:`vividhead.curation.stage`)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from vividhead import weights
from vividhead.curation.config import SECTIONS, ConfigError, CurateConfig, config_from_dict
from vividhead.curation.pipeline import build_stages
from vividhead.curation.ray_adapter import StageActor
from vividhead.curation.stage import (
    BaseStage,
    DeviceError,
    GlobalStage,
    SinkStage,
    Stage,
    StageConfig,
    check_devices,
    cuda_or_cpu,
)
from vividhead.curation.stage_list import STAGE_ORDER, STAGES
from vividhead.shard_format import MANIFEST_SCHEMA

BY_NAME = {cls.name: cls for cls in STAGES}
NAMES = list(BY_NAME)
PLAIN = (type(None), bool, int, float, str, bytes, tuple, list, dict, StageConfig)


def _built(name: str, cfg: CurateConfig | None = None) -> BaseStage:
    return next(s for s in build_stages(cfg or CurateConfig()) if s.name == name)


def test_the_list_drives_sections_and_order():
    assert len(NAMES) == len(STAGES), "stage names must be unique"
    assert list(SECTIONS) == ["run", *NAMES] and list(STAGE_ORDER) == NAMES
    assert [f.name for f in dataclasses.fields(CurateConfig)] == ["run", *NAMES]
    assert issubclass(STAGES[-1], SinkStage) and not any(issubclass(c, SinkStage) for c in STAGES[:-1])
    assert [s.name for s in build_stages(CurateConfig())] == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_declarations(name):
    cls = BY_NAME[name]
    assert issubclass(cls, (Stage, GlobalStage, SinkStage))
    assert issubclass(cls.config_class, StageConfig) and cls.config_class.__dataclass_params__.frozen
    assert isinstance(getattr(CurateConfig(), name), cls.config_class)
    unknown = set(cls.writes_columns) - set(MANIFEST_SCHEMA.names)
    assert not unknown, f"{name} writes columns the manifest schema does not have: {sorted(unknown)}"
    assert all(u in ("input", "clip") for u in cls.funnel_units)


@pytest.mark.parametrize("name", NAMES)
def test_picklable_and_init_loads_nothing(name, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError(f"{name}.__init__ resolved weights: models load in setup()")

    monkeypatch.setattr(weights, "resolve", no_loading)
    stage = _built(name)
    for attr, value in vars(stage).items():  # no model, detector, session or open file before setup()
        assert isinstance(value, PLAIN), f"{name}.{attr} is a {type(value).__name__} before setup()"
    data = pickle.dumps(stage)
    assert len(data) < 16_384, f"{name} pickles to {len(data)} bytes"
    back = pickle.loads(data)
    assert type(back) is type(stage) and back.cfg == stage.cfg
    stage.teardown()  # a no-op before setup, and idempotent
    stage.teardown()


@pytest.mark.parametrize("name", NAMES)
def test_weights_are_in_the_registry(name):
    variants = [CurateConfig(), config_from_dict({"asd": {"weights": "lightasd_talkset"}})]
    for cfg in variants:
        for registry_name, _ in _built(name, cfg).weights():
            assert registry_name in weights.REGISTRY, f"{name} needs unregistered weights {registry_name!r}"


@pytest.mark.parametrize("name", NAMES)
def test_a_gpu_without_cuda_is_a_one_line_startup_error(name):
    cfg = config_from_dict({name: {"num_gpus": 1}})
    with pytest.raises(ConfigError) as err:
        check_devices(build_stages(cfg), gpus_available=0)
    message = str(err.value)
    assert message.startswith(f"{name}.num_gpus: ") and "\n" not in message
    check_devices(build_stages(cfg), gpus_available=1)
    if not BY_NAME[name].required:  # a disabled stage asks for nothing
        check_devices(build_stages(config_from_dict({name: {"num_gpus": 1, "enabled": False}})), gpus_available=0)


def test_the_worker_refuses_a_gpu_it_does_not_have(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_or_cpu(0, "face") == "cpu"
    with pytest.raises(DeviceError, match=r"^speech\.num_gpus: 1 GPU requested but CUDA is not available"):
        cuda_or_cpu(1, "speech")
    for stage in build_stages(config_from_dict({n: {"num_gpus": 0.5} for n in NAMES})):
        if isinstance(stage, Stage):
            with pytest.raises(DeviceError):
                stage.device()


@pytest.mark.parametrize("name", NAMES)
def test_required_stages_cannot_be_disabled(name):
    if BY_NAME[name].required:
        with pytest.raises(ConfigError, match=rf"^{name}\.enabled: this stage cannot be disabled"):
            config_from_dict({name: {"enabled": False}})
    else:
        assert getattr(config_from_dict({name: {"enabled": False}}), name).enabled is False


class _Recorder(Stage):
    name = "recorder"
    config_class = StageConfig
    calls: list[str] = []

    def setup(self) -> None:
        self.calls.append("setup")

    def teardown(self) -> None:
        self.calls.append("teardown")

    def process(self, row):
        return [row]


def test_the_adapter_sets_up_and_tears_down():
    _Recorder.calls.clear()
    actor = StageActor(_Recorder(StageConfig()))
    assert _Recorder.calls == ["setup"]
    del actor  # Ray Data drops the callable when it shuts the actor down
    assert _Recorder.calls == ["setup", "teardown"]
