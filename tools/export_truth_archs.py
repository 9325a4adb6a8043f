"""Classification architectures as ONNX for the device-latency ground truth (dev tool: needs torch).

    .venv-train/bin/python tools/export_truth_archs.py --out build/device_truth/onnx [--only resnet50_224,...]
    make device-exports                      # the same, after creating / refreshing .venv-train

Writes {arch}_{res}.onnx for every architecture of the device-latency truth table at the resolutions it
names, plus architectures outside the table for generalisation checks. Latency depends on the graph, not
on the weights, so every model has random weights; each is in eval mode, batch 1, fixed shapes, one NCHW
float32 input `input`, one output `logits` (1000 classes), exported by the TorchScript exporter at
opset 13. Each file passes onnx.checker and one onnxruntime inference that must match torch's output;
each model's parameter count is checked against the published figure. Files that exist are skipped
unless --force. Ends with a table: arch, res, params (vs published), MMACs (Conv/Linear), file size.

Definitions are torchvision's own (torchvision.models, exact architectures) except the two torchvision
does not have, written here from their papers: mobilenet_v1 (Howard et al. 2017, width 1.0) and
shufflenet_v1 (Zhang et al. 2017, groups=3, 1.0x; laid out as the authors' release, megvii-model/
ShuffleNet-Series). torch / torchvision are dev tooling only: edgeopt never imports them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn


def load_torchvision_models():
    """torchvision.models, loaded without torchvision's C++ ops when they cannot load.

    The torchvision on the registry that pairs with torch 2.13.0 is 0.28.0+cu130, a CUDA build: its _C.so
    links libtorch_cuda / libc10_cuda, which the CPU torch does not ship, so the extension does not load.
    torchvision tolerates that (extension._has_ops() is False, and no classification model calls its ops:
    they are nms, roi_align, deform_conv... of the detection models), but _meta_registrations.py then
    registers fake kernels for torchvision::nms / ::qnms without checking _has_ops(), and
    `import torchvision` fails with "operator torchvision::nms does not exist". There is no environment
    variable to skip that module, and its fake kernels only serve torch.compile / FakeTensor tracing of
    those ops. So when, and only when, the plain import fails that way, this dev tool drops the half-
    imported package and imports it again with that one module replaced by an empty one. With a torchvision
    whose ops load (a CPU build), the plain import succeeds and nothing is stubbed.
    Returns (the torchvision.models module, a sentence saying how it was loaded).
    """
    try:
        import torchvision
        import torchvision.models as tvm
        return tvm, f"torchvision {torchvision.__version__} (plain import)"
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        reason = str(exc).splitlines()[0]
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    import torchvision
    import torchvision.models as tvm
    return tvm, (f"torchvision {torchvision.__version__}, C++ ops not loaded ({reason}); "
                 "torchvision._meta_registrations stubbed")


# ---- the two architectures torchvision does not define -------------------------------------------------

def conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MobileNetV1(nn.Module):
    """MobileNet v1, width 1.0 (Howard et al. 2017, Table 1): a 3x3 stride-2 conv to 32 channels, 13
    depthwise-separable blocks (3x3 depthwise + 1x1 pointwise, each BN + ReLU), global average pool, FC
    1024 -> 1000. 4,231,976 parameters (paper: 4.2 M), 569 M mult-adds at 224."""

    # (output channels, stride of the depthwise conv) of the 13 blocks
    BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, cin = [conv_bn_relu(3, 32, 3, 2)], 32
        for cout, stride in self.BLOCKS:
            layers += [conv_bn_relu(cin, cin, 3, stride, groups=cin), conv_bn_relu(cin, cout, 1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class ShuffleUnit(nn.Module):
    """ShuffleNet v1 unit (Zhang et al. 2017, Fig. 2 b/c): grouped 1x1 conv (BN, ReLU), channel shuffle,
    3x3 depthwise conv (BN, stride s), grouped 1x1 conv (BN); stride 1 adds the input, stride 2 concatenates
    a 3x3 stride-2 average pool of it; ReLU after the add (on the branch before the concat)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        self.stride, self.groups = stride, groups
        mid = cout // 4  # bottleneck: a quarter of the stage's output channels
        branch_out = cout - cin if stride == 2 else cout
        self.reduce = conv_bn_relu(cin, mid, 1, groups=first_groups)
        self.dw = conv_bn_relu(mid, mid, 3, stride, groups=mid, relu=False)
        self.expand = conv_bn_relu(mid, branch_out, 1, groups=groups, relu=False)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else None
        self.relu = nn.ReLU(inplace=True)

    def shuffle(self, x):
        # the paper's channel shuffle: channels as (groups, n), transposed to (n, groups), flattened
        b, c, h, w = x.shape
        return x.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x):
        y = self.expand(self.dw(self.shuffle(self.reduce(x))))
        if self.shortcut is None:
            return self.relu(x + y)
        return torch.cat([self.shortcut(x), self.relu(y)], 1)


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1, groups=3, 1.0x (Zhang et al. 2017, Table 1): a 3x3 stride-2 conv to 24 channels
    (BN, ReLU), a 3x3 stride-2 max pool, stages of 4 / 8 / 4 units with 240 / 480 / 960 channels (the first
    unit of each has stride 2; the very first 1x1 conv is not grouped, its input having only 24 channels),
    global average pool, FC 960 -> 1000 (no bias, as the authors' release). 1,864,728 parameters (paper /
    release: 1.9 M), 137 M mult-adds in Conv / Linear (paper: 140 MFLOPs, counted as mult-adds)."""

    def __init__(self, groups: int = 3, stages=(240, 480, 960), repeats=(4, 8, 4), num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1))
        units, cin = [], 24
        for s, (cout, n) in enumerate(zip(stages, repeats)):
            for i in range(n):
                units.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1, groups,
                                         1 if s == 0 and i == 0 else groups))
                cin = cout
        self.stages = nn.Sequential(*units)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes, bias=False)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


# ---- what to export ------------------------------------------------------------------------------------

# The device-latency truth table: architecture -> resolutions
TRUTH = {
    "alexnet": [224, 227], "vgg16": [224], "vgg19": [224],
    "resnet18": [224, 256], "resnet34": [224, 256], "resnet50": [224, 256, 299],
    "squeezenet1_0": [224, 227], "squeezenet1_1": [224, 227], "googlenet": [224],
    "mobilenet_v1": [224], "mobilenet_v2": [224, 300], "shufflenet_v1": [224],
}
# Not in the table: generalisation checks
EXTRA = {
    "mobilenet_v3_large": [224], "mobilenet_v3_small": [224], "efficientnet_b0": [224],
    "shufflenet_v2_x1_0": [224], "inception_v3": [299], "densenet121": [224], "resnet101": [224],
    "resnet152": [224], "resnext50_32x4d": [224], "mnasnet1_0": [224], "wide_resnet50_2": [224],
    "regnet_x_400mf": [224],
}
LOCAL = {"mobilenet_v1": MobileNetV1, "shufflenet_v1": ShuffleNetV1}
# torchvision builder keyword arguments: the two Inception-style nets without auxiliary heads and without
# the input re-normalisation (transform_input), weights initialised (init_weights) rather than warned about
TV_KWARGS = {
    "googlenet": dict(aux_logits=False, transform_input=False, init_weights=True),
    "inception_v3": dict(aux_logits=False, transform_input=False, init_weights=True),
}
# Published parameter counts: torchvision's model docs (weights' num_params; inception_v3's 27,161,264
# includes the aux head, 23,834,568 without it). mobilenet_v1 / shufflenet_v1: the papers' rounded
# figures (4.2 M, 1.9 M), checked to that rounding.
PUBLISHED = {
    "alexnet": 61_100_840, "vgg16": 138_357_544, "vgg19": 143_667_240, "resnet18": 11_689_512,
    "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160, "resnet152": 60_192_808,
    "squeezenet1_0": 1_248_424, "squeezenet1_1": 1_235_496, "googlenet": 6_624_904,
    "mobilenet_v2": 3_504_872, "mobilenet_v3_large": 5_483_032, "mobilenet_v3_small": 2_542_856,
    "efficientnet_b0": 5_288_548, "shufflenet_v2_x1_0": 2_278_604, "inception_v3": 23_834_568,
    "densenet121": 7_978_856, "resnext50_32x4d": 25_028_904, "mnasnet1_0": 4_383_312,
    "wide_resnet50_2": 68_883_240, "regnet_x_400mf": 5_495_976,
}
ROUNDED = {"mobilenet_v1": 4.2e6, "shufflenet_v1": 1.9e6}  # published to 0.1 M

OPSET = 13
RTOL = 1e-3  # onnxruntime vs torch: max |diff| / max |torch output|


def targets() -> list[tuple[str, int]]:
    return [(a, r) for table in (TRUTH, EXTRA) for a, rs in table.items() for r in rs]


def build(arch: str, tvm, res: int) -> nn.Module:
    torch.manual_seed(0)
    model = LOCAL[arch]() if arch in LOCAL else tvm.get_model(arch, weights=None, **TV_KWARGS.get(arch, {}))
    calibrate_bn(model, res)
    return model.eval()


def calibrate_bn(model: nn.Module, res: int) -> None:
    """Set every BatchNorm's running statistics to those of one random batch at the export resolution.

    With random weights and fresh statistics (mean 0, var 1) the activations of a deep net shrink layer by
    layer (googlenet's and mobilenet_v1's logits came out as the FC bias alone): the tensors drift into
    float32 denormals, which some CPUs process far slower, and a latency measured on them would be off.
    Calibrated, each BatchNorm output is at unit scale, as in a trained net. Nets without BatchNorm
    (alexnet, vgg, squeezenet) keep torchvision's initialisation, which already keeps the scale."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, res, res, generator=torch.Generator().manual_seed(1)))
    for m in bns:
        m.momentum = 0.1
    model.eval()


def param_check(arch: str, n: int) -> str:
    if arch in PUBLISHED:
        return "= published" if n == PUBLISHED[arch] else f"MISMATCH (published {PUBLISHED[arch]:,})"
    if arch in ROUNDED:
        ok = round(n / 1e5) == round(ROUNDED[arch] / 1e5)
        return f"~ {ROUNDED[arch] / 1e6:.1f} M" + ("" if ok else " MISMATCH")
    return "(no figure)"


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the Conv2d and Linear layers for one forward pass."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def export(model: nn.Module, x: torch.Tensor, path: Path) -> str:
    """Export to a temporary name, verify (checker, one onnxruntime run against torch), then rename."""
    tmp = path.with_suffix(".tmp.onnx")
    # the TorchScript exporter is chosen on purpose (dynamo=False): its deprecation notice is noise here
    warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
    with torch.no_grad():
        ref = model(x).numpy()
        other = model(torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).numpy()
    # logits that do not depend on the input mean the activations died out (see calibrate_bn)
    spread = float(np.max(np.abs(other - ref)) / max(float(np.max(np.abs(ref))), 1e-12))
    assert spread > 1e-2, f"the logits barely depend on the input (relative spread {spread:.1e})"
    with torch.no_grad():
        torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["logits"], do_constant_folding=True)
    try:
        onnx.checker.check_model(str(tmp))
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        ins, outs = sess.get_inputs(), sess.get_outputs()
        assert [i.name for i in ins] == ["input"] and ins[0].shape == list(x.shape), ins
        assert [o.name for o in outs] == ["logits"], outs
        got = sess.run(["logits"], {"input": x.numpy()})[0]
        assert got.shape == (1, 1000), got.shape
        err = float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-12))
        assert np.isfinite(got).all() and err < RTOL, f"onnxruntime differs from torch: rel err {err:.2e}"
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return f"ok (ort rel err {err:.1e})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("build/device_truth/onnx"))
    parser.add_argument("--only", default="",
                        help="comma-separated {arch}_{res} names (or bare arch names: all their resolutions)")
    parser.add_argument("--force", action="store_true", help="export again files that already exist")
    parser.add_argument("--list", action="store_true", help="print the {arch}_{res} names and exit")
    args = parser.parse_args()

    todo = targets()
    if args.list:
        print("\n".join(f"{a}_{r}" for a, r in todo))
        return 0
    if args.only:
        wanted = {w.strip() for w in args.only.split(",") if w.strip()}
        known = {f"{a}_{r}" for a, r in todo} | {a for a, _ in todo}
        if wanted - known:
            parser.error(f"unknown: {', '.join(sorted(wanted - known))} (see --list)")
        todo = [(a, r) for a, r in todo if a in wanted or f"{a}_{r}" in wanted]

    tvm, how = load_torchvision_models()
    print(f"torch {torch.__version__}; {how}; onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], 0
    for arch, res in todo:
        path = args.out / f"{arch}_{res}.onnx"
        t0 = time.perf_counter()
        try:
            model = build(arch, tvm, res)
            x = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(res))
            params = sum(p.numel() for p in model.parameters())
            check = param_check(arch, params)
            macs = count_macs(model, x)
            if path.exists() and not args.force:
                status = "exists (skipped)"
            else:
                status = export(model, x, path)
            if "MISMATCH" in check:
                failed += 1
        except Exception as exc:  # report it, go on with the others
            failed += 1
            params, check, macs = None, "", None
            status = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        size = f"{path.stat().st_size / 2**20:.1f} MiB" if path.exists() else "-"
        rows.append((arch, res, params, check, macs, size, status))
        print(f"{path.name}: {status} ({time.perf_counter() - t0:.1f} s)", flush=True)

    print(f"\n{'arch':<20} {'res':>4} {'params':>12}  {'vs published':<16} {'MMACs':>7} {'file':>11}  status")
    for arch, res, params, check, macs, size, status in rows:
        p = f"{params:,}" if params is not None else "-"
        m = f"{macs / 1e6:.0f}" if macs is not None else "-"
        print(f"{arch:<20} {res:>4} {p:>12}  {check:<16} {m:>7} {size:>11}  {status}")
    print(f"\n{len(rows) - failed} of {len(rows)} ok; files in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
