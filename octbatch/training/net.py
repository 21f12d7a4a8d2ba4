"""The shipped classifier's network (a small ResNet) and the temperature-scaled wrapper that is exported.
torch is imported inside the functions (the `train` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["build_model", "scaled_model"]


def build_model(num_classes: int = 4, *, channels: int = 1, stem: int = 16, widths: Sequence[int] = (16, 32, 64, 128)):
    """A small ResNet: 3x3/2 stem + 2x2 max-pool (128 -> 32 px), one basic block per stage."""
    from .._deps import require

    torch = require("torch", purpose="training")
    nn: Any = torch.nn

    def cbr(i, o, k=3, s=1):
        return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class Block(nn.Module):
        def __init__(self, i, o, stride):
            super().__init__()
            self.c1 = cbr(i, o, 3, stride)
            self.c2 = nn.Sequential(nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o))
            self.short = (
                None
                if (i == o and stride == 1)
                else nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))
            )
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.c2(self.c1(x))
            return self.act(y + (x if self.short is None else self.short(x)))

    class OctNet(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [cbr(channels, stem, 3, 2), nn.MaxPool2d(2)]
            c = stem
            for k, w in enumerate(widths):
                layers.append(Block(c, w, 1 if k == 0 else 2))
                c = w
            self.features = nn.Sequential(*layers)
            self.dropout = nn.Dropout(0.2)
            self.head = nn.Linear(c, num_classes)

        def forward(self, x):
            return self.head(self.dropout(self.features(x).mean(dim=(2, 3))))

    return OctNet()


def scaled_model(torch, model, temperature: float):
    """The trained network with its logits divided by the fitted temperature (one Div in the graph)."""

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model
            self.register_buffer("inv_t", torch.tensor(1.0 / float(temperature)))

        def forward(self, x):
            return self.net(x) * self.inv_t

    return Scaled().eval()
