"""Blocks of modern CNNs whose torch exports use the less common ops, exported here by both exporters (as the zoo
is, with build.py's `export`) and differentiated by onnxplain: the input gradient equals torch autograd's.

Each op also has its own finite-difference test (test_rules_*.py); these check the patterns the exporters write
around them (dynamo's GatherND for adaptive pooling, PixelShuffle's CRD DepthToSpace, ...). Needs torch (CI has it).
"""
import numpy as np
import pytest
from conftest import rel_err

torch = pytest.importorskip("torch")
nn = torch.nn

import onnxplain  # noqa: E402
from onnxplain.rewrite.graph import COTANGENT, GRAD, Request  # noqa: E402

C = 8


class Classifier(nn.Module):
    """conv → block → global average → 5 logits."""

    def __init__(self, block, channels=C):
        super().__init__()
        self.conv, self.block, self.fc = nn.Conv2d(3, C, 3), block, nn.Linear(channels, 5)

    def forward(self, x):
        return self.fc(self.block(self.conv(x)).mean((2, 3)))


class AdaptivePool(nn.Module):  # 14×14 → 5×5 overlapping bins: dynamo writes GatherND (legacy refuses)
    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(x, 5)


class ChannelMix(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(C, C))

    def forward(self, x):
        return torch.einsum("nchw,dc->ndhw", x, self.w)


class Statistics(nn.Module):  # ReduceLogSumExp, ReduceProd, CumSum and TopK in one block
    def forward(self, x):
        top = torch.topk(x.flatten(2), 3, dim=2)[0].sum(2)[..., None, None]
        gate = torch.prod(torch.sigmoid(x), dim=1, keepdim=True)
        return torch.cumsum(x, dim=2) * gate + torch.logsumexp(x, dim=1, keepdim=True) + top


BLOCKS = {
    "adaptive_pool": (lambda: Classifier(AdaptivePool()), ("dynamo",)),
    "pixel_shuffle": (lambda: Classifier(nn.Sequential(nn.Conv2d(C, 4 * C, 1), nn.PixelShuffle(2))),
                      ("dynamo", "legacy")),
    "einsum": (lambda: Classifier(ChannelMix()), ("dynamo", "legacy")),
    "statistics": (lambda: Classifier(Statistics()), ("dynamo", "legacy")),
}


@pytest.mark.parametrize("name, exporter", [(n, e) for n, (_, exporters) in BLOCKS.items() for e in exporters])
def test_exported_block_gradient_matches_autograd(name, exporter, tmp_path):
    from build import export
    torch.manual_seed(0)
    net = BLOCKS[name][0]().eval()
    path = tmp_path / f"{name}.onnx"
    export(net, path, exporter == "dynamo", (3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    u = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    m = onnxplain.load(path, device="cpu", preprocessing="unit")
    (grad,) = m.session(Request(differentiate=(m.score,), wrt=(m.input,))).run(
        [GRAD.format(m.input)], {m.input: x.numpy(), COTANGENT.format(m.score): u})
    x.requires_grad_()
    (net(x) * torch.from_numpy(u)).sum().backward()
    assert rel_err(grad, x.grad.numpy()) <= 1e-4
