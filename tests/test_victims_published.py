"""The SemSim study's victim training settings (inversefed's ``conservative`` strategy) and DLG's untrained LeNet."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from semsim.models.checkpoint import load_checkpoint
from semsim.victims.train import learning_rate


def test_step_schedule_reproduces_inverseds_multistep_milestones() -> None:
    epochs, steps = 200, 3
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    # inversefed's scheduler, stepped once per epoch: milestones epochs // 2.667, // 1.6, // 1.142
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[epochs // 2.667, epochs // 1.6, epochs // 1.142],
                                                 gamma=0.1)
    shares = (0.37, 0.62, 0.875)  # = 74, 124, 175 of 200 epochs (200 // 1.6 is 124.0 in floating point)
    for epoch in range(epochs):
        expected = opt.param_groups[0]["lr"]
        for s in range(steps):
            got = learning_rate(epoch * steps + s, epochs * steps, 0.1, "step", warmup=0.0, milestones=shares)
            assert got == pytest.approx(expected, rel=1e-12), epoch
        opt.step()
        sched.step()


def test_untrained_dlg_lenet_victim_from_the_cli(tmp_path: Path, monkeypatch, capsys) -> None:
    from semsim.cli import main
    from semsim.data.images import save_image

    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(3):
            save_image(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)), data / c / f"{i}.png")
    out = tmp_path / "dlg-lenet"
    monkeypatch.setattr(sys, "argv", ["semsim", "train-victim", "--arch", "lenet", "--init", "dlg", "--epochs",
                                      "0", "--data", str(data), "--out", str(out), "--quiet"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None) and "untrained" in capsys.readouterr().out
    state, config = load_checkpoint(out)
    values = torch.cat([v.flatten() for k, v in state.items()])
    assert float(values.abs().max()) < 0.5 and float(values.std()) > 0.25  # uniform(-0.5, 0.5), DLG's init
    assert config["training"]["init"] == "dlg" and config["training"]["epochs"] == 0
    assert json.loads((out / "config.json").read_text())["train_accuracy"] is None
