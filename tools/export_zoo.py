"""PyTorch models exported the ways people export them, for bench/bench_exports.py (dev tool: needs torch).

    .venv-train/bin/python tools/export_zoo.py --out build/exports

Eight small architectures with random weights (BatchNorm statistics made non-trivial), each exported by
the TorchScript exporter at old and current opsets (dynamic batch) and by the dynamo exporter (fixed
shapes): a U-Net-like segmenter (grouped conv, ConvTranspose, Resize, skip concat), a 1-D conv + GRU
audio net, a transformer encoder (nn.TransformerEncoder), a ViT (patch conv, LayerNorm, attention), an
NHWC depthwise net, a BERT (token ids + mask, two outputs, SDPA), a MobileNetV3 block (hard-swish, SE)
and a ResNeXt block (grouped conv). Each model gets NAME.npz with 16 input samples. Nothing here is
third-party: the point is the exporters' graph shapes, not the weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Seg(nn.Module):
    def __init__(s):
        super().__init__()
        s.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        s.c2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=2), nn.BatchNorm2d(32), nn.ReLU6())
        s.c3 = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.Hardswish())
        s.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        s.head = nn.Conv2d(16 + 32, 4, 1)

    def forward(s, x):
        b = s.c2(s.c1(x))
        y = s.head(torch.cat([s.up(s.c3(b)), b], 1))
        return F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)


class Audio(nn.Module):
    def __init__(s):
        super().__init__()
        s.conv = nn.Sequential(nn.Conv1d(1, 16, 9, stride=4), nn.BatchNorm1d(16), nn.ReLU(),
                               nn.Conv1d(16, 32, 5, stride=2), nn.ReLU())
        s.gru = nn.GRU(32, 32, batch_first=True)
        s.fc = nn.Linear(32, 5)

    def forward(s, x):
        o, _ = s.gru(s.conv(x).transpose(1, 2))
        return s.fc(o[:, -1])


class Encoder(nn.Module):
    def __init__(s):
        super().__init__()
        s.emb = nn.Linear(16, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, activation="gelu")
        s.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        s.head = nn.Linear(64, 10)

    def forward(s, x):
        return s.head(s.enc(s.emb(x)))


class ViT(nn.Module):
    def __init__(s):
        super().__init__()
        s.patch = nn.Conv2d(3, 48, 8, stride=8)
        s.cls = nn.Parameter(torch.randn(1, 1, 48))
        s.pos = nn.Parameter(torch.randn(1, 17, 48))
        s.norm = nn.LayerNorm(48)
        s.qkv = nn.Linear(48, 144)
        s.proj = nn.Linear(48, 48)
        s.mlp = nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 48))
        s.head = nn.Linear(48, 10)

    def forward(s, x):
        p = s.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([s.cls.expand(x.shape[0], -1, -1), p], 1) + s.pos
        q, k, v = s.qkv(s.norm(t)).chunk(3, -1)
        t = t + s.proj(torch.softmax(q @ k.transpose(1, 2) / 48 ** 0.5, -1) @ v)
        t = t + s.mlp(s.norm(t))
        return s.head(t[:, 0])


class Nhwc(nn.Module):
    def __init__(s):
        super().__init__()
        s.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        s.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        s.pw = nn.Conv2d(16, 32, 1)
        s.fc = nn.Linear(32, 6)

    def forward(s, x):
        x = x.permute(0, 3, 1, 2)
        x = F.relu(s.pw(F.relu6(s.dw(F.relu6(s.stem(x))))))
        return torch.softmax(s.fc(x.mean((2, 3))), -1)


class Bert(nn.Module):
    def __init__(s):
        super().__init__()
        s.tok, s.pos, s.ln = nn.Embedding(500, 64), nn.Embedding(32, 64), nn.LayerNorm(64)
        s.qkv, s.o, s.ln2 = nn.Linear(64, 192), nn.Linear(64, 64), nn.LayerNorm(64)
        s.ff = nn.Sequential(nn.Linear(64, 128), nn.GELU(approximate="tanh"), nn.Linear(128, 64))
        s.cls = nn.Linear(64, 3)

    def forward(s, ids, mask):
        b, t = ids.shape
        h = s.ln(s.tok(ids) + s.pos(torch.arange(t).unsqueeze(0)))
        q, k, v = s.qkv(h).view(b, t, 3, 4, 16).permute(2, 0, 3, 1, 4)
        bias = (1.0 - mask[:, None, None, :].float()) * -10000.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        h = s.ln2(h + s.o(a.transpose(1, 2).reshape(b, t, 64)))
        h = h + s.ff(h)
        return s.cls(h[:, 0]), h


class SE(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.a, s.b = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(s, x):
        return x * F.hardsigmoid(s.b(F.relu(s.a(x.mean((2, 3), keepdim=True)))))


class MobileNetV3(nn.Module):
    def __init__(s):
        super().__init__()
        s.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        s.b1 = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                             SE(16), nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        s.b2 = nn.Sequential(nn.Conv2d(16, 48, 1, bias=False), nn.BatchNorm2d(48), nn.Hardswish(),
                             nn.Conv2d(48, 48, 5, 1, 2, groups=48, bias=False), nn.BatchNorm2d(48), nn.Hardswish(),
                             SE(48), nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16))
        s.head = nn.Sequential(nn.Conv2d(16, 64, 1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(64, 7))

    def forward(s, x):
        x = s.b1(s.stem(x))
        return s.head(x + s.b2(x))


class ResNeXt(nn.Module):
    def __init__(s):
        super().__init__()
        s.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU())
        s.a = nn.Sequential(nn.Conv2d(32, 64, 1), nn.BatchNorm2d(64), nn.ReLU(),
                            nn.Conv2d(64, 64, 3, 1, 1, groups=8), nn.BatchNorm2d(64), nn.ReLU(),
                            nn.Conv2d(64, 32, 1), nn.BatchNorm2d(32))
        s.fc = nn.Linear(32, 5)

    def forward(s, x):
        x = s.stem(x)
        x = F.relu(x + s.a(x))
        return s.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# name: (model, input shapes, TorchScript opsets); inputs are float standard normal unless named ids / mask
ZOO = {
    "seg": (Seg, {"x": (2, 3, 64, 64)}, (9, 11, 14)),
    "audio": (Audio, {"x": (2, 1, 1600)}, (9, 11, 14)),
    "encoder": (Encoder, {"x": (2, 20, 16)}, (14,)),
    "vit": (ViT, {"x": (2, 3, 32, 32)}, (11, 14)),
    "nhwc": (Nhwc, {"x": (2, 48, 48, 3)}, (7, 11, 14)),
    "bert": (Bert, {"ids": (2, 24), "mask": (2, 24)}, (14, 17)),
    "mobilenetv3": (MobileNetV3, {"x": (2, 3, 64, 64)}, (13,)),
    "resnext": (ResNeXt, {"x": (2, 3, 32, 32)}, (13,)),
}
DYNAMO_OPSET = 18


def sample(name: str, shape: tuple, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    shape = (n or shape[0],) + tuple(shape[1:])
    if name == "ids":
        return rng.integers(0, 500, shape).astype(np.int64)
    if name == "mask":
        mask = np.ones(shape, np.int64)
        mask[1::2, shape[1] * 3 // 4:] = 0
        return mask
    return rng.standard_normal(shape).astype(np.float32)


def build(cls) -> nn.Module:
    model = cls().eval()
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("build/exports"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    for name, (cls, shapes, opsets) in ZOO.items():
        model = build(cls)
        example = tuple(torch.from_numpy(sample(k, s, rng)) for k, s in shapes.items())
        np.savez(args.out / f"{name}.npz", **{k: sample(k, s, rng, n=16) for k, s in shapes.items()})
        names = list(shapes)
        outputs = ["logits", "hidden"] if name == "bert" else ["y"]
        dynamic = {k: {0: "batch"} for k in names}
        exports = [(f"{name}_ts{op}", dict(dynamo=False, opset_version=op, dynamic_axes=dynamic)) for op in opsets]
        exports.append((f"{name}_dynamo{DYNAMO_OPSET}", dict(dynamo=True, opset_version=DYNAMO_OPSET)))
        for stem, how in exports:
            try:
                torch.onnx.export(model, example, str(args.out / f"{stem}.onnx"), input_names=names,
                                  output_names=outputs, **how)
                print(f"wrote {stem}.onnx")
            except Exception as exc:  # an exporter that cannot take the model at that opset: say so, go on
                print(f"skipped {stem}: {str(exc).splitlines()[0][:160]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
