"""Attack engine: L-BFGS histories that diverge between rows, the one-sample gradient path, DLG against
torch.optim.LBFGS, and the speed options (channels-last, TF32 flags, torch.compile)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from helpers import shared_path, torch_lbfgs
from semsim.attacks import GradientModel, attack_set, client_gradients, create_attack
from semsim.attacks.engine import EngineOptions
from semsim.attacks.lbfgs import BatchedLBFGS
from semsim.data.datasets import load_dataset
from semsim.errors import SemsimError
from semsim.models import create_model, model_config
from semsim.models.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def kinked(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Linear along ``c`` (no curvature there, so L-BFGS stores no pair from steps along ``c``) until
    ``u . x`` drops below -2 (``u = c / |c|``), then a quadratic wall; a mild quadratic across ``c``."""
    u = c / c.norm()
    along = u @ x
    return c @ x + 0.5 * torch.relu(-along - 2).pow(2) + 0.05 * (x - along * u).pow(2).sum()


def test_lbfgs_rows_with_different_histories_each_follow_torch():
    # Row 0 starts on the line through 0 along c: its first steps follow -c exactly (no curvature, no pair
    # stored) until it meets the wall; row 1 starts off that line and stores a pair from its second
    # iteration. So the rows' ring buffers fill at different times, and wrap (history 4).
    torch.manual_seed(0)
    d = 12
    c = torch.randn(d)
    c = 0.5 * c / c.norm()
    starts = torch.stack([torch.zeros(d), torch.randn(d)])
    xs = starts.clone()
    opt = BatchedLBFGS(xs, lr=1, history_size=4, tolerance_change=0, tolerance_grad=0)
    active = torch.ones(2, dtype=torch.bool)
    heads = []
    for it in range(1, 16):
        v = xs.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(sum(kinked(r, c) for r in v), v)
        active = opt.step(g, active)
        heads.append(opt.head.tolist())
        if it in (4, 15):
            for row in (0, 1):
                expected = torch_lbfgs(lambda x: kinked(x, c), starts[row], it, 4)
                torch.testing.assert_close(xs[row], expected, atol=1e-4, rtol=1e-4)
    assert any(h0 != h1 for h0, h1 in heads)  # the histories really were out of step


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_one_sample_path_equals_vmap_path_and_its_image_gradient(mode):
    torch.manual_seed(0)
    model = create_model("convnet", 10, width=4).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x, y = torch.rand(1, 3, 32, 32), torch.tensor([3])
    results = []
    for functional in (False, True):
        gm = GradientModel(model, mode=mode, track_bn=True, functional=functional)
        xi = x.clone().requires_grad_(True)
        grads, stats = gm.per_sample(xi, y)
        (dx,) = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), xi)
        gm.close()
        results.append((grads, stats, dx))
    (g1, s1, d1), (g2, s2, d2) = results
    for a, b in zip(g1 + s1, g2 + s2, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    if mode == "eval":
        torch.testing.assert_close(d1, d2, atol=1e-5, rtol=1e-4)


def test_one_sample_image_gradient_in_train_mode_matches_finite_differences():
    # Per-image BatchNorm statistics: the image gradient of the matching loss against a float64 central
    # difference. (torch.func's vmap path is off here by ~2e-4 relative in float64, the plain path is exact.)
    torch.manual_seed(0)
    model = create_model("convnet", 10, width=4).eval().double()
    x, y = torch.rand(1, 3, 32, 32, dtype=torch.float64), torch.tensor([3])
    v = torch.randn_like(x)
    gm = GradientModel(model, mode="train")

    def f(image: torch.Tensor) -> torch.Tensor:
        return sum(g.pow(2).sum() for g in gm.per_sample(image, y)[0])

    xi = x.clone().requires_grad_(True)
    (dx,) = torch.autograd.grad(f(xi), xi)
    eps = 1e-6
    fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
    assert (dx * v).sum().item() == pytest.approx(fd.item(), rel=1e-7)
    gm.close()


def dlg_lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("lenet", 10, mean=(0, 0, 0), std=(1, 1, 1)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    return model


def test_dlg_follows_torch_lbfgs_with_dlgs_closure():
    # DLG (Zhu et al. 2019) written directly: dummy image and soft label, L-BFGS (lr 1, history 100), loss the
    # squared distance of the dummy gradient to the observed one. Same start as semsim's generator draws.
    model = dlg_lenet()
    x, y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)), torch.tensor([2])
    observed = client_gradients(model, x, y)
    gen = torch.Generator().manual_seed(7)
    dummy = torch.randn((1, 3, 32, 32), generator=gen).requires_grad_(True)
    soft = torch.randn((1, 10), generator=gen).requires_grad_(True)
    opt = torch.optim.LBFGS([dummy, soft], lr=1, max_iter=4, history_size=100)

    def closure():
        opt.zero_grad()
        loss = torch.sum(-F.softmax(soft, -1) * F.log_softmax(model(dummy), -1))
        dy = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
        diff = sum((a - b[0]).pow(2).sum() for a, b in zip(dy, observed, strict=True))
        diff.backward()
        return diff

    opt.step(closure)
    out = create_attack("dlg", iterations=4).reconstruct(model, observed, None, (3, 32, 32),
                                                         generators=[torch.Generator().manual_seed(7)])
    torch.testing.assert_close(out.images[0], dummy.detach()[0].clamp(0, 1), atol=2e-3, rtol=0)


def test_engine_options_parse_and_restore_flags():
    assert EngineOptions.parse("eager") == EngineOptions()
    opts = EngineOptions.parse("tf32+channels-last+cudagraphs")
    assert (opts.tf32, opts.channels_last, opts.compile) == (True, True, "reduce-overhead")
    assert EngineOptions.parse(opts.label) == opts
    with pytest.raises(SemsimError, match="unknown"):
        EngineOptions.parse("tf32+fast")
    with pytest.raises(SemsimError, match="one of"):
        EngineOptions.parse("compile+cudagraphs")
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with EngineOptions(tf32=True).context():
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    with EngineOptions().context():  # FP32 also in cuDNN convolutions (PyTorch's default allows TF32 there)
        assert not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_channels_last_gives_the_same_reconstruction():
    torch.manual_seed(0)
    model = create_model("convnet", 10, width=4).eval()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 5])
    grads = client_gradients(model, x, y)
    runs = [create_attack("invgrad", iterations=8, engine=EngineOptions(channels_last=cl)).reconstruct(
        model, grads, y, (3, 32, 32), generators=[torch.Generator().manual_seed(i) for i in range(2)])
        for cl in (False, True)]
    torch.testing.assert_close(runs[0].images, runs[1].images, atol=1e-3, rtol=0)


class Tiny(torch.nn.Module):
    """A small classifier that compiles in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.sigmoid(self.conv(x)).flatten(1))


@pytest.mark.slow
def test_compiled_loop_equals_eager_on_cpu():
    # Inverting Gradients' loop (the SemSim study's attack); DLG's L-BFGS loop compiles the same function
    # of its flat variable. About 15 s of CPU time, mostly compiling.
    attack = "invgrad"
    torch.manual_seed(0)
    model = Tiny().eval()
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 2])
    grads = client_gradients(model, x, y)
    runs = []
    for engine in (EngineOptions(), EngineOptions(compile="default")):
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        out = create_attack(attack, iterations=6, engine=engine).reconstruct(model, grads, y, (3, 8, 8),
                                                                             generators=gens)
        runs.append(out)
    torch.testing.assert_close(runs[0].images, runs[1].images, atol=1e-3, rtol=0)
    for a, b in zip(runs[0].records, runs[1].records, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-6)


def test_attack_set_records_the_engine_and_resumes_only_with_the_same(tmp_path):
    root = shared_path("cifar10_test")
    data_dir = tmp_path / "cifar_small"
    for name in ("airplane", "automobile"):
        (data_dir / name).mkdir(parents=True)
        shutil.copy(root / name / "0000.jpg", data_dir / name / "0000.jpg")
    torch.manual_seed(0)
    victim = tmp_path / "victim"
    save_checkpoint(victim, create_model("lenet", 2), model_config("lenet", 2))
    ds, out = load_dataset(data_dir), tmp_path / "set"
    args = dict(iterations=2, batch_size=2, show_progress=False)
    attack_set(victim, ds, "invgrad", out, engine="channels-last", **args)
    settings = json.loads((out / "attack.json").read_text())
    assert settings["engine"] == "channels-last" and "engine" not in settings["attack"]
    with pytest.raises(SemsimError, match="engine"):
        attack_set(victim, ds, "invgrad", out, **args)
    del settings["engine"]  # a run of a version that did not record the engine ran eager
    (out / "attack.json").write_text(json.dumps(settings))
    assert len(attack_set(victim, ds, "invgrad", out, **args)) == 2


def test_cli_refuses_an_unknown_engine_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from semsim.cli import app

    result = CliRunner().invoke(app, ["attack", "--victim", str(tmp_path / "victim"), "--data", str(tmp_path),
                                      "--out", str(tmp_path / "out"), "--engine", "tf32+fast"])
    # semsim.cli.main turns this error into one "error:" line and exit 2 (tests/test_bad_inputs.py)
    assert isinstance(result.exception, SemsimError) and "fast" in str(result.exception)
    assert not (tmp_path / "out").exists()
