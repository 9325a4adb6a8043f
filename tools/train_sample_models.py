#!/usr/bin/env python3
"""Train edgeopt's sample models on scikit-learn's digits and export them to ONNX.

This is a developer tool. It needs PyTorch, which must never become a runtime
dependency of edgeopt, so it runs in its own virtual environment:

    python3 -m venv .venv-train
    .venv-train/bin/pip install -r tools/requirements-train.txt
    .venv-train/bin/python tools/train_sample_models.py

It writes, into ``sample_models/`` (or ``--out DIR``):

- ``digits_calib.npz`` and ``digits_test.npz``: the calibration and test
  splits, already preprocessed (8x8 -> 32x32 bilinear, /16, mean/std
  normalized with the training split's statistics). Keys: ``input``
  (float32, [N, 1, 32, 32]) and ``labels`` (int64, [N]).
- ``mobilenet_digits.onnx``, ``resnet_digits.onnx``, ``vgg_digits.onnx``:
  three trained classifiers, opset 13, input ``input`` [N, 1, 32, 32] with a
  dynamic batch dimension ``N``, output ``logits`` [N, 10], every
  BatchNormalization kept as its own node (not folded by the exporter).
- ``resnet_digits_opset11.onnx``: the trained ResNet exported at opset 11.
- ``mobilenet_digits_constants.onnx``: the trained MobileNet exported at
  opset 12, then every initializer turned into a Constant node.
- ``README.md``: what each file is, with the accuracies measured here with
  onnxruntime on ``digits_test.npz``.

Every exported model is checked before the script exits: it passes the full
onnx checker, its BatchNormalization nodes are in the graph, onnxruntime
reproduces the PyTorch logits, and the main models reach the minimum test
accuracy. Seeds are fixed, so a rerun trains the same networks.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning.
# On a 2-core machine shared with other work, spinning threads made an epoch
# up to 8x slower (a barrier waits for a thread that is not scheduled).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402

SEED = 0
IMAGE_SIZE = 32
NUM_CLASSES = 10
TEST_FRACTION = 0.30
CALIB_FRACTION = 0.10
MAIN_OPSET = 13
MIN_TEST_ACCURACY = 0.95
# onnxruntime vs PyTorch on the same fp32 weights: float rounding only.
LOGITS_ATOL = 1e-4
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
REPO_ROOT = Path(__file__).resolve().parent.parent
# The README section tools/train_multihead_models.py writes (its models' figures) starts with this line.
MULTIHEAD_BEGIN = "<!-- multi-output models: written by tools/train_multihead_models.py -->"
REGENERATE_COMMAND = (
    "python3 -m venv .venv-train && "
    ".venv-train/bin/pip install -r tools/requirements-train.txt && "
    ".venv-train/bin/python tools/train_sample_models.py"
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Split:
    """One preprocessed split: exactly what the models consume."""

    inputs: np.ndarray  # float32 [N, 1, 32, 32]
    labels: np.ndarray  # int64 [N]


@dataclasses.dataclass
class DigitsData:
    train: Split
    calib: Split
    test: Split
    mean: float
    std: float


def upscale(images_8x8: np.ndarray) -> np.ndarray:
    """[N, 8, 8] in 0..16 -> [N, 1, 32, 32] in 0..1, bilinear."""
    x = torch.from_numpy(images_8x8.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return x.numpy()


def load_digits_splits() -> DigitsData:
    """Load digits, split stratified with a fixed seed, upscale and normalize.

    The normalization statistics (one mean and one std over all pixels) come
    from the training split only and are baked into every split's arrays.
    """
    digits = load_digits()
    images = digits.images  # [1797, 8, 8], values 0..16
    labels = digits.target.astype(np.int64)
    indices = np.arange(len(labels))
    rest_idx, test_idx = train_test_split(
        indices, test_size=TEST_FRACTION, stratify=labels, random_state=SEED
    )
    calib_share_of_rest = CALIB_FRACTION / (1.0 - TEST_FRACTION)
    train_idx, calib_idx = train_test_split(
        rest_idx, test_size=calib_share_of_rest, stratify=labels[rest_idx], random_state=SEED
    )
    pixels = upscale(images)
    mean = float(pixels[train_idx].mean())
    std = float(pixels[train_idx].std())
    normalized = ((pixels - mean) / std).astype(np.float32)

    def split(idx: np.ndarray) -> Split:
        idx = np.sort(idx)
        return Split(np.ascontiguousarray(normalized[idx]), labels[idx].copy())

    return DigitsData(split(train_idx), split(calib_idx), split(test_idx), mean, std)


def save_split(split: Split, path: Path) -> None:
    np.savez_compressed(path, **{INPUT_NAME: split.inputs, "labels": split.labels})
    log(f"wrote {path} ({len(split.labels)} samples)")


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """A bias-free convolution followed by its BatchNorm."""
    return [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, depthwise 3x3, 1x1 linear project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            *conv_bn(cin, hidden, 1),
            nn.ReLU6(inplace=True),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU6(inplace=True),
            *conv_bn(hidden, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetDigits(nn.Module):
    """MobileNetV2-style: stem, six inverted residual blocks, 1x1 head, pool, Linear."""

    # (in channels, out channels, stride, expansion)
    # The stem has stride 2 as in MobileNetV2, so the blocks run at 16x16,
    # 8x8 and 4x4: depthwise convolutions are slow to train on a CPU.
    BLOCKS = [
        (16, 16, 1, 4),
        (16, 24, 2, 6),
        (24, 24, 1, 6),
        (24, 32, 2, 6),
        (32, 32, 1, 6),
        (32, 64, 1, 6),
    ]

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [*conv_bn(1, 16, 3, stride=2), nn.ReLU6(inplace=True)]
        layers += [InvertedResidual(*spec) for spec in self.BLOCKS]
        layers += [*conv_bn(64, 128, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(128, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN downsample when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv_bn(cout, cout, 3)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(*conv_bn(cin, cout, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetDigits(nn.Module):
    """ResNet-style: stem, one plain and two strided basic blocks, pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 16, 3), nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class VGGDigits(nn.Module):
    """Plain VGG-style: 3x3 conv+BN+ReLU stacks, max pools, Flatten -> Linear -> ReLU -> Linear."""

    # channels per conv; "M" is a 2x2 max pool
    CONFIG = [16, 16, "M", 32, 32, "M", 64, "M"]

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for item in self.CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [*conv_bn(cin, int(item), 3), nn.ReLU(inplace=True)]
                cin = int(item)
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(64 * 4 * 4, 64), nn.ReLU(inplace=True), nn.Linear(64, NUM_CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def train_model(model: nn.Module, data: DigitsData, epochs: int, seed: int) -> nn.Module:
    """Adam + cosine schedule on the train split; returns the model in eval mode."""
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train = torch.from_numpy(data.train.inputs)
    y_train = torch.from_numpy(data.train.labels)
    batch_size = 64
    steps_per_epoch = (len(y_train) + batch_size - 1) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=epochs * steps_per_epoch
    )
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y_train), generator=generator)
        total_loss = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(batch)
        if epoch == epochs - 1 or epoch % 4 == 0:
            log(f"  epoch {epoch + 1:2d}/{epochs} loss {total_loss / len(y_train):.4f}")
    return model.eval()


@torch.no_grad()
def torch_logits(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(inputs)).numpy()


# --------------------------------------------------------------------------
# Export and conversion
# --------------------------------------------------------------------------


def export_onnx(model: nn.Module, path: Path, opset: int) -> onnx.ModelProto:
    """Export with the TorchScript exporter, keeping every BatchNormalization.

    The eval-mode model is exported with ``TrainingMode.PRESERVE`` and no
    constant folding: with the defaults (``TrainingMode.EVAL`` and constant
    folding) the exporter folds each BatchNormalization into the convolution
    before it, and the sample models exist to give edgeopt's own
    ``fold_batchnorm`` something to fold.

    The exporter also deduplicates initializers with equal values and feeds
    the second user through an ``Identity`` node. That happens for real in
    ``resnet_digits``: in a downsampling block, the last BN's bias and the
    downsample BN's bias get identical gradients (both are summed by the
    residual Add), so they stay equal through training. The Identity nodes
    are undone here so that every BatchNormalization reads initializers.
    """
    assert not model.training
    dummy = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (see above); not news.
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
        )
    return identity_initializers_to_copies(onnx.load(str(path)))


def identity_initializers_to_copies(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each ``Identity(initializer)`` node by a copy of the initializer."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    graph_outputs = {out.name for out in graph.output}
    kept = []
    for node in graph.node:
        if (
            node.op_type == "Identity"
            and node.input[0] in initializers
            and node.output[0] not in graph_outputs
        ):
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return model


def initializers_to_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy whose initializers are all Constant nodes at the top of the graph."""
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    initializer_names = {init.name for init in graph.initializer}
    if any(inp.name in initializer_names for inp in graph.input):
        raise ValueError("initializers listed as graph inputs cannot become Constants")
    constants = [
        onnx.helper.make_node(
            "Constant", inputs=[], outputs=[init.name], name=f"const_{init.name}", value=init
        )
        for init in graph.initializer
    ]
    nodes = constants + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    return converted


def save_model(model: onnx.ModelProto, path: Path) -> None:
    onnx.save(model, str(path))
    log(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


# --------------------------------------------------------------------------
# Verification and figures
# --------------------------------------------------------------------------


def ort_logits(path: Path, inputs: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


@dataclasses.dataclass
class ModelFacts:
    file: str
    architecture: str
    opset: int
    params: int
    macs: int | None
    nodes: int
    bn_nodes: int
    constant_nodes: int
    size_bytes: int
    test_accuracy: float
    max_abs_diff_vs_torch: float


def count_macs(model: nn.Module) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one 1x1x32x32 image."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    with torch.no_grad():
        model(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE))
    for handle in handles:
        handle.remove()
    return total


def verify_export(
    path: Path,
    architecture: str,
    torch_model: nn.Module,
    reference_logits: np.ndarray,
    test: Split,
    macs: int,
) -> ModelFacts:
    """Check the file and measure it; raise if anything is off."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    op_types = [node.op_type for node in model.graph.node]
    bn_nodes = op_types.count("BatchNormalization")
    expected_bn = sum(isinstance(m, nn.BatchNorm2d) for m in torch_model.modules())
    if bn_nodes != expected_bn:
        raise RuntimeError(
            f"{path.name}: {bn_nodes} BatchNormalization nodes, expected {expected_bn}"
        )
    if "Identity" in op_types:
        raise RuntimeError(f"{path.name}: Identity nodes left in the graph")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    logits = ort_logits(path, test.inputs)
    diff = float(np.abs(logits - reference_logits).max())
    if diff > LOGITS_ATOL * max(1.0, float(np.abs(reference_logits).max())):
        raise RuntimeError(f"{path.name}: onnxruntime differs from PyTorch by {diff:.3g}")
    # The batch dimension must be dynamic: run one sample and a batch of 7 too.
    for n in (1, 7):
        if ort_logits(path, test.inputs[:n]).shape != (n, NUM_CLASSES):
            raise RuntimeError(f"{path.name}: wrong output shape for batch {n}")
    params = sum(p.numel() for p in torch_model.parameters())
    facts = ModelFacts(
        file=path.name,
        architecture=architecture,
        opset=opset,
        params=params,
        macs=macs,
        nodes=len(op_types),
        bn_nodes=bn_nodes,
        constant_nodes=op_types.count("Constant"),
        size_bytes=path.stat().st_size,
        test_accuracy=accuracy(logits, test.labels),
        max_abs_diff_vs_torch=diff,
    )
    log(
        f"  {facts.file}: opset {opset}, {facts.nodes} nodes, {bn_nodes} BN, "
        f"test acc {facts.test_accuracy:.4f}, max |ort - torch| {diff:.2g}"
    )
    return facts


# --------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------


ARCHITECTURES = {
    "mobilenet": (
        "MobileNetV2-style: 3x3 stride-2 stem conv (16) + BN + ReLU6; six inverted "
        "residual blocks (1x1 expand, depthwise 3x3, 1x1 linear project, BN after every "
        "conv, ReLU6 after the expand and the depthwise conv, residual Add where stride is 1 "
        "and channels match: three of them; channels 16-16-24-24-32-32-64, expansion 4 then "
        "6, strides 1-2-1-2-1-1, so 16x16 -> 8x8 -> 4x4); 1x1 conv to 128 + BN + ReLU6; "
        "GlobalAveragePool; Flatten; Gemm 128->10"
    ),
    "resnet": (
        "ResNet-style: 3x3 stem conv (16) + BN + ReLU; basic blocks 16->16 (stride 1, "
        "identity shortcut), 16->32 and 32->64 (stride 2, 1x1 conv + BN downsample); "
        "residual Add then ReLU; GlobalAveragePool; Flatten; Gemm 64->10"
    ),
    "vgg": (
        "VGG-style: conv3x3+BN+ReLU 16, 16, MaxPool, 32, 32, MaxPool, 64, MaxPool; "
        "Flatten (64x4x4=1024) -> Gemm 1024->64 -> ReLU -> Gemm 64->10"
    ),
}


def render_readme(data: DigitsData, facts: list[ModelFacts], seconds: float) -> str:
    def macs_text(macs: int | None) -> str:
        return "-" if macs is None else f"{macs / 1e6:.2f} M"

    rows = "\n".join(
        f"| `{f.file}` | {f.opset} | {f.params:,} | {macs_text(f.macs)} | {f.nodes} | "
        f"{f.bn_nodes} | {f.constant_nodes} | {f.size_bytes / 1024:.0f} KiB | "
        f"{f.test_accuracy * 100:.2f} % |"
        for f in facts
    )
    regenerate = REGENERATE_COMMAND.replace(" && ", " && \\\n  ")
    n_total = len(data.train.labels) + len(data.calib.labels) + len(data.test.labels)
    return f"""# Sample models and labelled data

Real networks, trained on real labelled data, for edgeopt's tests, recipes
and benchmarks. Generated by `tools/train_sample_models.py`; do not edit by
hand (this README included: the script writes it with the figures it measured).

## Data

scikit-learn's digits data set ({n_total} 8x8 greyscale images of the digits
0-9, shipped inside scikit-learn, no download), preprocessed once and stored
exactly as the models consume it:

1. upscaled from 8x8 to 32x32 with bilinear interpolation
   (`torch.nn.functional.interpolate`, `align_corners=False`);
2. divided by 16 (pixel values 0..16 -> 0..1);
3. normalized with one mean and one standard deviation over all pixels of
   the training split: `(x - {data.mean:.6f}) / {data.std:.6f}`.

Split stratified by label with seed {SEED} (`sklearn.model_selection.train_test_split`):

| split | samples | file |
|---|---|---|
| train | {len(data.train.labels)} | not stored (regenerate with the script) |
| calibration | {len(data.calib.labels)} | `digits_calib.npz` |
| test | {len(data.test.labels)} | `digits_test.npz` |

Each `.npz` holds `input` (float32, `[N, 1, 32, 32]`; the key is the ONNX
graph input name) and `labels` (int64, `[N]`), so it can be given as a
recipe's `data:` as it is.

## Models

All models: input `input` float32 `[N, 1, 32, 32]` (`N` is a dynamic batch
dimension), output `logits` float32 `[N, 10]` (no softmax). Every
convolution has no bias and is followed by its own `BatchNormalization`
node: the exporter was told not to fold them, so `fold_batchnorm` has work
to do. ReLU6 is exported as `Clip(min=0, max=6)` whose `min` and `max` are
inputs fed by `Constant` nodes (the only Constant nodes in the main models,
whose weights are all initializers).

| file | opset | params | MACs | nodes | BN nodes | Constant nodes | size | fp32 test accuracy |
|---|---|---|---|---|---|---|---|---|
{rows}

MACs count the Conv and Gemm multiply-accumulates for one image. Accuracy is
fp32 top-1 on `digits_test.npz`, measured with onnxruntime on the exported
file.

- `mobilenet_digits.onnx`: {ARCHITECTURES["mobilenet"]}.
- `resnet_digits.onnx`: {ARCHITECTURES["resnet"]}.
- `vgg_digits.onnx`: {ARCHITECTURES["vgg"]}. It has the Flatten -> Gemm
  pattern that structured pruning must handle across the reshape.
- `resnet_digits_opset11.onnx`: the same trained ResNet exported at opset 11
  (for version-conversion and old-opset handling).
- `mobilenet_digits_constants.onnx`: the same trained MobileNet exported at
  opset 12, then every initializer turned into a `Constant` node (the graph
  has no initializers at all); for passes that must find weights behind
  Constant nodes as well as in initializers.

The variants reproduce their main model's logits in onnxruntime to float32
rounding (the script checks every file against PyTorch's logits, max abs
difference <= {LOGITS_ATOL:g} relative to the logit scale).

## Regenerating

From the repository root (PyTorch lives in its own venv, never in edgeopt's):

```sh
{regenerate}
```

Seeds are fixed (torch, numpy, the split) and training runs on the CPU
(`--threads`, default 2). The run that produced these files took
{seconds:.0f} s in all, on a 2-core machine shared with other work. Two runs
there wrote byte-identical `.onnx` and `.npz` files; across torch versions,
CPUs or thread counts expect the same networks, not the same bytes.
"""


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


@dataclasses.dataclass
class ModelSpec:
    key: str
    build: type[nn.Module]
    epochs: int


MODEL_SPECS = [
    ModelSpec("mobilenet", MobileNetDigits, epochs=20),
    ModelSpec("resnet", ResNetDigits, epochs=15),
    ModelSpec("vgg", VGGDigits, epochs=15),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "sample_models", help="output folder"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="PyTorch CPU threads (default: 2)"
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    torch.set_num_threads(args.threads)
    started = time.monotonic()

    data = load_digits_splits()
    log(
        f"digits: train {len(data.train.labels)}, calib {len(data.calib.labels)}, "
        f"test {len(data.test.labels)}"
    )
    save_split(data.calib, out / "digits_calib.npz")
    save_split(data.test, out / "digits_test.npz")

    facts: list[ModelFacts] = []
    trained: dict[str, tuple[nn.Module, np.ndarray, int]] = {}
    for index, spec in enumerate(MODEL_SPECS):
        log(f"training {spec.key} ({spec.epochs} epochs)")
        seed_everything(SEED + index)
        train_started = time.monotonic()
        model = train_model(spec.build(), data, spec.epochs, seed=SEED + index)
        log(f"  trained in {time.monotonic() - train_started:.0f} s")
        reference = torch_logits(model, data.test.inputs)
        log(f"  torch test accuracy {accuracy(reference, data.test.labels):.4f}")
        macs = count_macs(model)
        path = out / f"{spec.key}_digits.onnx"
        save_model(export_onnx(model, path, MAIN_OPSET), path)
        result = verify_export(path, spec.key, model, reference, data.test, macs)
        if result.test_accuracy < MIN_TEST_ACCURACY:
            raise RuntimeError(f"{path.name}: test accuracy {result.test_accuracy:.4f} too low")
        facts.append(result)
        trained[spec.key] = (model, reference, macs)

    model, reference, macs = trained["resnet"]
    path = out / "resnet_digits_opset11.onnx"
    save_model(export_onnx(model, path, 11), path)
    facts.append(verify_export(path, "resnet", model, reference, data.test, macs))

    model, reference, macs = trained["mobilenet"]
    path = out / "mobilenet_digits_constants.onnx"
    exported = export_onnx(model, path, 12)
    save_model(initializers_to_constants(exported), path)
    facts.append(verify_export(path, "mobilenet", model, reference, data.test, macs))

    seconds = time.monotonic() - started
    readme = out / "README.md"
    text = render_readme(data, facts, seconds)
    kept = readme.read_text() if readme.exists() else ""
    if MULTIHEAD_BEGIN in kept:  # tools/train_multihead_models.py's section: its own figures, kept as written
        text = text.rstrip("\n") + "\n\n" + MULTIHEAD_BEGIN + kept.split(MULTIHEAD_BEGIN, 1)[1]
    readme.write_text(text)
    log(f"wrote {readme}; done in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
