"""Actor CPU reservations must fit the cluster, or Ray Data leaves later actor pools pending forever."""

from __future__ import annotations

import pytest

from vividhead.curation.ray_adapter import actor_cpu_scale, needs_actor
from vividhead.curation.stages.face import FaceConfig, FaceStage
from vividhead.curation.stages.normalize import NormalizeConfig, NormalizeStage
from vividhead.curation.stages.transition import TransitionConfig, TransitionStage


def test_model_stages_are_actors_and_others_tasks():
    assert needs_actor(FaceStage(FaceConfig())) and not needs_actor(NormalizeStage(NormalizeConfig()))


@pytest.mark.parametrize("cpus, n_models, expected", [(2, 5, 0.2), (2, 1, 1.0), (64, 5, 1.0), (1, 3, 0.5 / 3)])
def test_minimum_actors_leave_room_for_tasks(cpus, n_models, expected):
    stages = [NormalizeStage(NormalizeConfig()), TransitionStage(TransitionConfig())]
    stages += [FaceStage(FaceConfig()) for _ in range(n_models)]
    scale = actor_cpu_scale(stages, cpus)
    assert scale == pytest.approx(expected)
    reserved = sum(s.cfg.num_cpus * scale for s in stages if needs_actor(s))
    assert reserved <= max(cpus - 1, cpus / 2) + 1e-9


def test_disabled_and_fixed_size_pools():
    stages = [FaceStage(FaceConfig(enabled=False)), FaceStage(FaceConfig(workers=3)), NormalizeStage(NormalizeConfig())]
    assert actor_cpu_scale(stages, 2) == pytest.approx(1 / 3)
