"""The published victim architectures: inversefed's ConvNet layer order, DLG's LeNet initialisation."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from semsim.models.classifiers import ConvNet, LeNet, create_model


def _inversefed_convnet(width: int, num_classes: int) -> nn.Sequential:
    """Inverting Gradients' ConvNet as its paper/code lists it: conv0..conv5, pool0, conv6, conv7, pool1."""
    widths = [(3, width), (width, 2 * width), (2 * width, 2 * width), (2 * width, 4 * width),
              (4 * width, 4 * width), (4 * width, 4 * width), (4 * width, 4 * width), (4 * width, 4 * width)]
    layers: list[tuple[str, nn.Module]] = []
    for k, (cin, cout) in enumerate(widths):
        layers += [(f"conv{k}", nn.Conv2d(cin, cout, 3, padding=1)), (f"bn{k}", nn.BatchNorm2d(cout)),
                   (f"relu{k}", nn.ReLU())]
        if k == 5:
            layers.append(("pool0", nn.MaxPool2d(3)))
    layers += [("pool1", nn.MaxPool2d(3)), ("flatten", nn.Flatten()), ("linear", nn.Linear(36 * width, num_classes))]
    return nn.Sequential(OrderedDict(layers))


def test_convnet_has_inversefeds_layer_order() -> None:
    ours = ConvNet(num_classes=10, width=4)
    kinds = ["pool" if isinstance(m, nn.MaxPool2d) else "conv" for m in ours.body
             if isinstance(m, nn.Conv2d | nn.MaxPool2d)]
    assert kinds == ["conv"] * 6 + ["pool"] + ["conv"] * 2 + ["pool"]
    assert [m.out_channels for m in ours.body if isinstance(m, nn.Conv2d)] == [4, 8, 8, 16, 16, 16, 16, 16]
    assert ours.feature_dim == 36 * 4
    # the same weights in the published layout compute the same function
    ref = _inversefed_convnet(4, 10)
    mine = [p for p in ours.body.parameters()] + [ours.head.weight, ours.head.bias]
    with torch.no_grad():
        for p, q in zip(ref.parameters(), mine, strict=True):
            p.copy_(q)
        for b, c in zip(ref.buffers(), ours.body.buffers(), strict=True):
            b.copy_(c)
    ours.eval()
    ref.eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ours(x), ref(ours.normalize(x)), atol=1e-5)


def test_lenet_offers_dlgs_uniform_initialisation() -> None:
    torch.manual_seed(0)
    dlg = create_model("lenet", num_classes=10, init="dlg")
    values = torch.cat([p.detach().flatten() for p in dlg.parameters()])
    assert float(values.min()) > -0.5 and float(values.max()) < 0.5
    assert abs(float(values.mean())) < 0.01 and abs(float(values.std()) - 12 ** -0.5) < 0.01  # uniform(-.5, .5)
    default = LeNet(num_classes=10)
    assert float(default.head.weight.detach().abs().max()) < 0.05  # PyTorch's default is much narrower here
    torch.manual_seed(0)
    again = create_model("lenet", num_classes=10, init="dlg")
    assert all(torch.equal(p, q) for p, q in zip(dlg.parameters(), again.parameters(), strict=True))
