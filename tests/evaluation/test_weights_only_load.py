"""The guard around torch-fidelity's weight loading refuses pickled code even when the caller asks
for ``weights_only=False`` (as torch-fidelity 0.4.0 does). CPU, no torchvision needed."""

from __future__ import annotations

import pickle

import pytest
import torch

from vividhead.evaluation.fid import _weights_only_load


class Payload:
    ran = False

    def __reduce__(self):
        return (Payload.mark, ())

    @staticmethod
    def mark():
        Payload.ran = True
        return "ran"


def test_pickled_code_is_refused_even_with_weights_only_false(tmp_path):
    torch.save({"x": Payload()}, tmp_path / "evil.pth")
    with _weights_only_load(), pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "evil.pth", weights_only=False)
    assert not Payload.ran
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pth")
    with _weights_only_load():
        assert torch.equal(torch.load(tmp_path / "ok.pth", weights_only=False)["w"], torch.ones(2))
    assert torch.load is not None and torch.load.__name__ == "load"  # restored
