"""Torch definitions of the bundled models (dev-only: torch is not a runtime dependency of onnxplain).

- `MobileNetV2`: torchvision's MobileNetV2 (width 1.0) with identical module names, so torchvision's
  ImageNet state_dict loads with strict=True.
- `ZOO`: small 10-class CNNs on 3x32x32 inputs, one per architectural pattern the gradient rewriter must
  handle. Each class has `INFO = {"name": ..., "cam_layer": ...}`; `cam_layer` is the dotted module name
  (for `model.get_submodule`) of its last convolutional feature block, the usual Grad-CAM target.
- `TRANSFORMERS`: a small ViT on the same inputs, in `models/transformer/`, for the engine's gradient only.
- `load_zoo_torch(name)`: rebuilds the exact torch module of `models/zoo/<name>.npz`.
"""
from pathlib import Path

import numpy as np
import torch
from torch import nn

ZOO_DIR = Path(__file__).resolve().parent / "zoo"


def conv_bn_act(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU6):
    """Conv (no bias) + BatchNorm + activation, as torchvision's Conv2dNormActivation (a Sequential)."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


# --------------------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers = [conv_bn_act(inp, hidden, 1)] if expand_ratio != 1 else []
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    INFO = {"name": "mobilenet_v2", "cam_layer": "features.18"}

    def __init__(self, num_classes=1000, dropout=0.2):
        super().__init__()
        features, cin = [conv_bn_act(3, 32, stride=2)], 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(conv_bn_act(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------------------------- zoo
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv_bn_act(cin, cout, stride=stride, act=nn.ReLU)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv-BN-ReLU, overlapping 3x3/s2/p1 MaxPool, identity block, projection block, GAP, Linear."""
    INFO = {"name": "resnet", "cam_layer": "layer2"}

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_act(3, 16, act=nn.ReLU), nn.MaxPool2d(3, 2, 1))
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean((2, 3)))


class VGG(nn.Module):
    """Conv/ReLU/MaxPool 2x2 stacks, Flatten, Linear/ReLU/Dropout/Linear."""
    INFO = {"name": "vgg", "cam_layer": "block2"}

    def __init__(self, num_classes=10):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                    nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(32, num_classes))

    def forward(self, x):
        return self.classifier(self.block2(self.block1(x)))


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 producing `growth` new channels, concatenated to its input."""

    def __init__(self, cin, growth):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


def dense_block(cin, growth, n):
    return nn.Sequential(*(DenseLayer(cin + i * growth, growth) for i in range(n)))


class DenseNet(nn.Module):
    """Stem, dense block (Concat), transition BN-ReLU-Conv1x1 + AvgPool 2x2, dense block, BN-ReLU, GAP, Linear."""
    INFO = {"name": "densenet", "cam_layer": "block2"}

    def __init__(self, num_classes=10, growth=8):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.block1 = dense_block(16, growth, 3)
        self.transition = nn.Sequential(nn.BatchNorm2d(40), nn.ReLU(), nn.Conv2d(40, 20, 1, bias=False), nn.AvgPool2d(2))
        self.block2 = dense_block(20, growth, 2)
        self.head = nn.Sequential(nn.BatchNorm2d(36), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(36, num_classes))

    def forward(self, x):
        return self.head(self.block2(self.transition(self.block1(self.stem(x)))))


class SqueezeExcite(nn.Module):
    """GlobalAvgPool -> 1x1 conv -> ReLU -> 1x1 conv -> HardSigmoid, then Mul with the input."""

    def __init__(self, c, squeeze):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, squeeze, 1), nn.ReLU(),
                                  nn.Conv2d(squeeze, c, 1), nn.Hardsigmoid())

    def forward(self, x):
        return x * self.gate(x)


class MBBlock(nn.Module):
    """MobileNetV3 bottleneck: expand 1x1, depthwise kxk, squeeze-excite, project 1x1; residual when shapes allow."""

    def __init__(self, cin, hidden, cout, stride):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        self.body = nn.Sequential(conv_bn_act(cin, hidden, 1, act=nn.Hardswish),
                                  conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.Hardswish),
                                  SqueezeExcite(hidden, 8),
                                  nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.body(x) if self.use_res_connect else self.body(x)


class MobileNetV3(nn.Module):
    """HardSwish stem, inverted residual with SE, strided block, 1x1 head conv, GAP, Linear-HardSwish-Linear."""
    INFO = {"name": "mobilenetv3", "cam_layer": "last_conv"}

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = conv_bn_act(3, 16, stride=2, act=nn.Hardswish)
        self.block1 = MBBlock(16, 48, 16, 1)
        self.block2 = MBBlock(16, 64, 24, 2)
        self.last_conv = conv_bn_act(24, 64, 1, act=nn.Hardswish)
        self.classifier = nn.Sequential(nn.Linear(64, 32), nn.Hardswish(), nn.Linear(32, num_classes))

    def forward(self, x):
        x = self.last_conv(self.block2(self.block1(self.stem(x))))
        return self.classifier(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class InceptionModule(nn.Module):
    """Parallel 1x1 / 1x1-3x3 / 1x1-5x5 / AvgPool 3x3 (stride 1, pad 1) + 1x1 branches, concatenated."""

    def __init__(self, cin, count_include_pad):
        super().__init__()
        self.b1 = conv_bn_act(cin, 8, 1, act=nn.ReLU)
        self.b3 = nn.Sequential(conv_bn_act(cin, 8, 1, act=nn.ReLU), conv_bn_act(8, 12, 3, act=nn.ReLU))
        self.b5 = nn.Sequential(conv_bn_act(cin, 4, 1, act=nn.ReLU), conv_bn_act(4, 8, 5, act=nn.ReLU))
        self.pool = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=count_include_pad),
                                  conv_bn_act(cin, 8, 1, act=nn.ReLU))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], 1)


class Inception(nn.Module):
    """Stem, inception module (AvgPool count_include_pad=True), MaxPool, module (count_include_pad=False), GAP, Linear."""
    INFO = {"name": "inception", "cam_layer": "mixed2"}

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = conv_bn_act(3, 16, act=nn.ReLU)
        self.mixed1 = InceptionModule(16, count_include_pad=True)
        self.pool = nn.MaxPool2d(2)
        self.mixed2 = InceptionModule(36, count_include_pad=False)
        self.fc = nn.Linear(36, num_classes)

    def forward(self, x):
        x = self.mixed2(self.pool(self.mixed1(self.stem(x))))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


ZOO = {cls.INFO["name"]: cls for cls in (ResNet, VGG, DenseNet, MobileNetV3, Inception)}


class Attention(nn.Module):
    """Multi-head self-attention written out: qkv Linear, softmax(q kᵀ / √d) v per head, output Linear."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / (c // self.heads) ** 0.5, dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(n, t, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attention(LN x), then x + MLP(LN x) with GELU."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small vision transformer: 8x8 patches of 32x32 as a strided conv, a class token, learned positions, two
    blocks, LayerNorm, and a Linear head on the class token (not a CNN: it checks the ops transformers add)."""
    INFO = {"name": "vit", "cam_layer": "blocks.1.norm1"}

    def __init__(self, num_classes=10, dim=32, heads=4):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 8, 8)
        self.cls = nn.Parameter(0.1 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.1 * torch.randn(1, 17, dim))
        self.blocks = nn.Sequential(Block(dim, heads), Block(dim, heads))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(self.norm(self.blocks(t))[:, 0])


TRANSFORMERS = {"vit": ViT}  # not in ZOO: the CNN methods' reference tests do not apply to them


def randomize(model, generator, calibration):
    """Seeded test weights: He-normal conv/linear weights with small random biases; LayerNorm and BatchNorm with
    random affine parameters, BatchNorm's running statistics measured on the `calibration` batch, so BN matters
    while activations stay O(1). Leaves the model in eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * (2 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=generator))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=generator))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=generator))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=generator))
                m.momentum = 1.0  # running statistics := those of the calibration batch
        model.train()(calibration)
    return model.eval()


def load_zoo_torch(name, zoo_dir=ZOO_DIR):
    """The eval-mode torch module whose weights are stored as `state/<key>` in `<zoo_dir>/<name>.npz`."""
    with np.load(Path(zoo_dir) / f"{name}.npz") as data:
        state = {k[len("state/"):]: torch.from_numpy(data[k]) for k in data.files if k.startswith("state/")}
    model = ZOO[name]()
    model.load_state_dict(state, strict=True)
    return model.eval()
