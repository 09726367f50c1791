"""The one resumable training-state format: round trip, damaged files and foreign runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from semsim.common.train_state import load_train_state, save_train_state
from semsim.errors import SemsimError


def _model_and_optimizer(seed: int) -> tuple[nn.Module, torch.optim.SGD]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.01}],
                          lr=0.1, momentum=0.9)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    return model, opt


def test_round_trip_restores_weights_buffers_momentum_and_meta(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer(0)
    save_train_state(tmp_path / "s.safetensors", model, opt, {"fingerprint": "f", "epoch": 3, "history": [1.5]})
    other, other_opt = _model_and_optimizer(1)
    meta = load_train_state(tmp_path / "s.safetensors", other, other_opt, "f")
    assert meta == {"fingerprint": "f", "epoch": 3, "history": [1.5]}
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    for i in (0, 2):  # the BatchNorm parameters are not optimised: no momentum
        for p, q in zip(model[i].parameters(), other[i].parameters(), strict=True):
            assert torch.equal(opt.state[p]["momentum_buffer"], other_opt.state[q]["momentum_buffer"])


def test_damaged_and_foreign_states_stop_with_one_line(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer(0)
    path = tmp_path / "s.safetensors"
    path.write_bytes(b"\x00" * 40)
    with pytest.raises(SemsimError, match="damaged training state") as info:
        load_train_state(path, model, opt, "f")
    assert "\n" not in str(info.value)
    save_train_state(path, model, opt, {"fingerprint": "f"})
    path.write_bytes(path.read_bytes()[:-7])  # cut short, as a full disk would
    with pytest.raises(SemsimError, match="damaged training state"):
        load_train_state(path, model, opt, "f")
    save_train_state(path, model, opt, {"fingerprint": "f"})
    with pytest.raises(SemsimError, match="different training run"):
        load_train_state(path, model, opt, "g")
