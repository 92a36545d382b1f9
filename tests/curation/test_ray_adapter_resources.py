"""Actor CPU reservations must fit the cluster, or Ray Data leaves later actor pools pending forever."""

from __future__ import annotations

import pytest
import ray

from vividhead.curation import ray_adapter
from vividhead.curation.ray_adapter import actor_cpu_scale, apply_stage, needs_actor
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


def test_min_workers_count_as_the_pools_minimum_actors():
    stages = [FaceStage(FaceConfig(min_workers=3)), NormalizeStage(NormalizeConfig())]
    assert actor_cpu_scale(stages, 2) == pytest.approx(1 / 3)


class _Dataset:
    """Records the ``flat_map`` that :func:`apply_stage` appends (no Ray Data, no cluster)."""

    def flat_map(self, fn, **kwargs):
        self.fn, self.kwargs = fn, kwargs
        return self


@pytest.mark.parametrize("pool, size", [
    ({}, (1, 16)),
    ({"min_workers": 8}, (8, 16)),
    ({"min_workers": 20}, (20, 20)),  # more than the CPU count: the pool starts them all
    ({"workers": 3}, (3, 3)),
])
def test_actor_pool_starts_min_workers_and_grows_to_the_cpu_count(monkeypatch, pool, size):
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0})
    ds = apply_stage(_Dataset(), FaceStage(FaceConfig(**pool)))
    assert ds.fn is ray_adapter.StageActor
    compute = ds.kwargs["compute"]
    assert (compute.min_size, compute.max_size) == size
