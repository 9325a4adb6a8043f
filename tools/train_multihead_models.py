#!/usr/bin/env python3
"""Train edgeopt's two multi-output sample models and export them to ONNX.

A developer tool, run in the training venv next to tools/train_sample_models.py (`make sample-models`
runs both):

    .venv-train/bin/python tools/train_multihead_models.py

It writes, into ``sample_models/`` (or ``--out DIR``):

- ``ssd_digits.onnx``: a RetinaNet / FCOS-style detector of the digits 0-9 pasted on a 64x64 canvas.
  Input ``input`` [N, 1, 64, 64] (pixels / 255); four outputs, two feature levels x two heads:
  ``score_p3`` [N, 10, 8, 8] and ``score_p4`` [N, 10, 4, 4] (sigmoid class scores, 0..1), ``box_p3``
  [N, 4, 8, 8] and ``box_p4`` [N, 4, 4, 4] (distances from the cell centre to the box's left, top,
  right and bottom edges, in pixels: values in the tens).
- ``onet_faces.onnx``: an MTCNN O-Net-style face / landmark net on rendered 48x48 face crops.
  Input ``input`` [N, 3, 48, 48] ((pixel - 127.5) / 128, as MTCNN); three outputs: ``prob`` [N, 2]
  (softmax, not-face / face), ``box`` [N, 4] (bounding-box offsets relative to the crop, MTCNN's
  convention: values near 0), ``landmarks`` [N, 10] (five points, x1..x5 then y1..y5, as fractions of
  the crop: values 0..1).
- ``ssd_digits_{calib,test}.npz`` and ``onet_faces_{calib,test}.npz``: calibration and held-out inputs
  (key ``input``) plus their ground truth under keys no model input has (``objects``; ``face``,
  ``box``, ``landmarks``), so each file is a recipe's ``data:`` as it is. No ``labels``: accuracy in
  edgeopt is top-1 against one class per sample, which these outputs are not.
- the "Multi-output models" section of ``README.md`` (between the markers; tools/train_sample_models.py
  keeps it when it rewrites the README).

Exported like the other sample models (TorchScript exporter, opset 13, TrainingMode.PRESERVE, no
constant folding, every BatchNormalization its own node, dynamic batch ``N``), checked with the full
onnx checker and against PyTorch's outputs in onnxruntime, and held to minimum accuracies.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_sample_models as base  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402

log = base.log
OPSET = base.MAIN_OPSET
OUTPUT_ATOL = 1e-4  # onnxruntime vs PyTorch, relative to each output's scale
README_BEGIN = base.MULTIHEAD_BEGIN
README_END = "<!-- end of multi-output models -->"

# --------------------------------------------------------------------------
# Shared
# --------------------------------------------------------------------------


def export(model: nn.Module, path: Path, input_shape: tuple[int, ...], outputs: list[str]) -> onnx.ModelProto:
    """The sample models' exporter settings (train_sample_models.export_onnx), several outputs."""
    assert not model.training
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
        torch.onnx.export(
            model, (torch.zeros(1, *input_shape),), str(path), dynamo=False, opset_version=OPSET,
            input_names=[base.INPUT_NAME], output_names=outputs,
            dynamic_axes={base.INPUT_NAME: {0: "N"}, **{o: {0: "N"} for o in outputs}},
            training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
        )
    model_proto = base.identity_initializers_to_copies(onnx.load(str(path)))
    onnx.save(model_proto, str(path))
    log(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return model_proto


def run_ort(path: Path, inputs: np.ndarray) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {base.INPUT_NAME: inputs})))


@dataclasses.dataclass
class Facts:
    file: str
    outputs: list[str]
    params: int
    macs: int
    nodes: int
    bn_nodes: int
    size_bytes: int
    max_rel_diff: float
    output_norms: dict[str, float]  # RMS of each output on the test inputs
    metrics: dict[str, float]
    train_seconds: float


def count_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def verify(path: Path, model: nn.Module, shape: tuple[int, ...], names: list[str], test_inputs: np.ndarray,
           metrics: dict[str, float], seconds: float) -> Facts:
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    expected_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if ops.count("BatchNormalization") != expected_bn:
        raise RuntimeError(f"{path.name}: {ops.count('BatchNormalization')} BN nodes, expected {expected_bn}")
    if [o.name for o in proto.graph.output] != names:
        raise RuntimeError(f"{path.name}: outputs {[o.name for o in proto.graph.output]}, expected {names}")
    with torch.no_grad():
        reference = [t.numpy() for t in model(torch.from_numpy(test_inputs))]
    got = run_ort(path, test_inputs)
    worst = 0.0
    for name, ref in zip(names, reference):
        diff = float(np.abs(got[name] - ref).max()) / max(1.0, float(np.abs(ref).max()))
        worst = max(worst, diff)
        if diff > OUTPUT_ATOL:
            raise RuntimeError(f"{path.name}: {name} differs from PyTorch by {diff:.3g} (relative)")
    for n in (1, 5):
        if run_ort(path, test_inputs[:n])[names[0]].shape[0] != n:
            raise RuntimeError(f"{path.name}: wrong batch for {n}")
    norms = {n: float(np.sqrt(np.mean(np.square(got[n], dtype=np.float64)))) for n in names}
    facts = Facts(path.name, names, sum(p.numel() for p in model.parameters()), count_macs(model, shape),
                  len(ops), ops.count("BatchNormalization"), path.stat().st_size, worst, norms, metrics, seconds)
    log(f"  {path.name}: {facts.nodes} nodes, {facts.params} params, max |ort - torch| {worst:.2g} (relative), "
        f"rms {', '.join(f'{k} {v:.3g}' for k, v in norms.items())}")
    return facts


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, act: type[nn.Module] = nn.ReLU,
                 padding: int | None = None) -> list[nn.Module]:
    pad = k // 2 if padding is None else padding
    return [nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout),
            act(cout) if act is nn.PReLU else act(inplace=True)]


def fit(model: nn.Module, loss_fn, n: int, epochs: int, seed: int, lr: float = 3e-3, batch: int = 64) -> float:
    """AdamW + one-cycle over `n` samples; loss_fn(model, index tensor) -> loss. Returns seconds."""
    base.seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * ((n + batch - 1) // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    started = time.monotonic()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            optimizer.zero_grad()
            loss = loss_fn(model, idx)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
        if epoch == epochs - 1 or epoch % 4 == 0:
            log(f"  epoch {epoch + 1:2d}/{epochs} loss {total / n:.4f} ({time.monotonic() - started:.0f} s)")
    model.eval()
    return time.monotonic() - started


# --------------------------------------------------------------------------
# Detector: digits on a canvas, two levels x (class scores, boxes)
# --------------------------------------------------------------------------

CANVAS = 64
LEVELS = (("p3", 8), ("p4", 16))  # name, stride
SIZES = range(12, 31)  # side of the pasted digit square, pixels
P3_MAX_SIZE = 20  # squares up to this side are p3's, larger ones p4's
MAX_OBJECTS = 3
DET_CLASSES = 10
MIN_MAP50 = 0.80


def digit_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The raw 8x8 digits (0..1) of the sample models' stratified train / calib / test split (same seeds)."""
    digits = load_digits()
    labels = digits.target.astype(np.int64)
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=base.TEST_FRACTION, stratify=labels, random_state=base.SEED)
    share = base.CALIB_FRACTION / (1.0 - base.TEST_FRACTION)
    train, calib = train_test_split(rest, test_size=share, stratify=labels[rest], random_state=base.SEED)
    images = digits.images.astype(np.float32) / 16.0
    return {k: (images[np.sort(v)], labels[np.sort(v)]) for k, v in (("train", train), ("calib", calib),
                                                                      ("test", test))}


def render_canvases(images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n canvases [n, 1, 64, 64] (8-bit pixels / 255) with 1-3 non-overlapping digits each, and their objects
    [n, 3, 5] (class, x1, y1, x2, y2: the tight box of the digit's ink; -1 rows pad)."""
    rng = np.random.default_rng(seed)
    resized = {s: F.interpolate(torch.from_numpy(images)[:, None], size=(s, s), mode="bilinear",
                                align_corners=False)[:, 0].numpy() for s in SIZES}
    canvases = np.zeros((n, 1, CANVAS, CANVAS), np.float32)
    objects = np.full((n, MAX_OBJECTS, 5), -1.0, np.float32)
    ramp = np.linspace(0, 1, CANVAS, dtype=np.float32)
    for i in range(n):
        a, bx, by = rng.uniform(0, 0.15), rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1)
        canvas = np.clip(a + bx * ramp[None, :] + by * ramp[:, None] + 0.1, 0, 1)
        canvas = canvas + rng.normal(0, 0.02, canvas.shape)
        placed: list[tuple[int, int, int]] = []
        for k in range(int(rng.integers(1, MAX_OBJECTS + 1))):
            for _ in range(30):
                s = int(rng.choice(list(SIZES)))
                x0, y0 = (int(v) for v in rng.integers(0, CANVAS - s + 1, 2))
                if all(x0 >= px + ps or px >= x0 + s or y0 >= py + ps or py >= y0 + s for px, py, ps in placed):
                    break
            else:
                continue
            j = int(rng.integers(len(labels)))
            patch = resized[s][j] * rng.uniform(0.6, 1.0)
            ys, xs = np.nonzero(patch > 0.25 * patch.max())
            region = canvas[y0:y0 + s, x0:x0 + s]
            canvas[y0:y0 + s, x0:x0 + s] = np.maximum(region, patch)
            objects[i, len(placed)] = (labels[j], x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
            placed.append((x0, y0, s))
        canvases[i, 0] = np.round(np.clip(canvas, 0, 1) * 255) / 255
    return canvases, objects


def level_of(obj: np.ndarray) -> int:
    return 0 if max(obj[3] - obj[1], obj[4] - obj[2]) <= P3_MAX_SIZE * 0.85 else 1


def detector_targets(objects: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per level: class targets [n, 10, G, G], ltrb box targets in pixels [n, 4, G, G], positive mask [n, G, G].
    A cell is positive for an object of its level when its centre is inside the box and within 1.5 strides of
    the box centre (FCOS centre sampling), always the cell holding the centre; the smaller box wins a tie."""
    out = []
    for level, (_, stride) in enumerate(LEVELS):
        g = CANVAS // stride
        centres = (np.arange(g) + 0.5) * stride
        cls = np.zeros((len(objects), DET_CLASSES, g, g), np.float32)
        box = np.zeros((len(objects), 4, g, g), np.float32)
        pos = np.zeros((len(objects), g, g), bool)
        area = np.full((len(objects), g, g), np.inf)
        for i, objs in enumerate(objects):
            for obj in objs:
                if obj[0] < 0 or level_of(obj) != level:
                    continue
                c, x1, y1, x2, y2 = obj
                mx, my = (x1 + x2) / 2, (y1 + y2) / 2
                cx, cy = np.meshgrid(centres, centres)
                inside = (cx > x1) & (cx < x2) & (cy > y1) & (cy < y2)
                near = (np.abs(cx - mx) <= 1.5 * stride) & (np.abs(cy - my) <= 1.5 * stride)
                mask = inside & near
                mask[min(int(my // stride), g - 1), min(int(mx // stride), g - 1)] = True
                mask &= (x2 - x1) * (y2 - y1) < area[i]
                area[i][mask] = (x2 - x1) * (y2 - y1)
                pos[i][mask] = True
                cls[i][:, mask] = 0
                cls[i, int(c)][mask] = 1
                for ch, value in enumerate((cx - x1, cy - y1, x2 - cx, y2 - cy)):
                    box[i, ch][mask] = np.maximum(value, 0.5)[mask]
        out.append((cls, box, pos))
    return out


class SSDDigits(nn.Module):
    """Backbone 1 -> 16 (s2, 32x32) -> 24 (s2, 16x16) -> 24 -> 32 (s2, 8x8: p3) -> 48 (s2, 4x4: p4); at each
    level a class tower (conv3x3 + BN + ReLU, conv1x1 -> 10, Sigmoid) and a box tower (conv3x3 + BN + ReLU,
    conv1x1 -> 4, ReLU, x stride: pixels)."""

    OUTPUTS = ["score_p3", "box_p3", "score_p4", "box_p4"]

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(1, 16, stride=2), *conv_bn_relu(16, 24, stride=2),
                                  *conv_bn_relu(24, 24), *conv_bn_relu(24, 32, stride=2))
        self.down = nn.Sequential(*conv_bn_relu(32, 48, stride=2))
        self.cls_towers = nn.ModuleList()
        self.box_towers = nn.ModuleList()
        for ch in (32, 48):
            cls_out = nn.Conv2d(ch, DET_CLASSES, 1)
            nn.init.constant_(cls_out.bias, -math.log(99.0))  # RetinaNet's prior: scores start at 0.01
            self.cls_towers.append(nn.Sequential(*conv_bn_relu(ch, ch), cls_out))
            self.box_towers.append(nn.Sequential(*conv_bn_relu(ch, ch), nn.Conv2d(ch, 4, 1)))
        self.strides = [float(s) for _, s in LEVELS]

    def raw(self, x: torch.Tensor):
        p3 = self.stem(x)
        p4 = self.down(p3)
        return [(self.cls_towers[i](f), F.relu(self.box_towers[i](f)) * self.strides[i])
                for i, f in enumerate((p3, p4))]

    def forward(self, x: torch.Tensor):
        (c3, b3), (c4, b4) = self.raw(x)
        return torch.sigmoid(c3), b3, torch.sigmoid(c4), b4


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    weight = alpha * target + (1 - alpha) * (1 - target)
    return (weight * (1 - pt) ** gamma * ce).sum()


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [..., 4] against b [..., 4] (x1, y1, x2, y2), broadcast."""
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area = lambda z: (z[..., 2] - z[..., 0]) * (z[..., 3] - z[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def decode(outputs: dict[str, np.ndarray], threshold: float = 0.05, nms: float = 0.5) -> list[np.ndarray]:
    """Per image, detections [k, 6] (class, score, x1, y1, x2, y2): each cell's best class above threshold,
    class-wise NMS."""
    per_image = []
    n = len(outputs["score_p3"])
    for i in range(n):
        dets = []
        for name, stride in LEVELS:
            scores, boxes = outputs[f"score_{name}"][i], outputs[f"box_{name}"][i]
            g = scores.shape[-1]
            centres = (np.arange(g) + 0.5) * stride
            cx, cy = np.meshgrid(centres, centres)
            cls, best = scores.argmax(0), scores.max(0)
            keep = best > threshold
            l, t, r, b = boxes
            dets.append(np.stack([cls[keep], best[keep], (cx - l)[keep], (cy - t)[keep], (cx + r)[keep],
                                  (cy + b)[keep]], 1))
        dets = np.concatenate(dets)[np.argsort(-np.concatenate(dets)[:, 1])]
        kept: list[np.ndarray] = []
        for d in dets:
            if all(k[0] != d[0] or iou(k[2:], d[2:]) < nms for k in kept):
                kept.append(d)
        per_image.append(np.array(kept).reshape(-1, 6))
    return per_image


def detection_metrics(outputs: dict[str, np.ndarray], objects: np.ndarray) -> dict[str, float]:
    """mAP at IoU 0.5 (VOC all-point, mean over the 10 classes), and precision / recall at score 0.5."""
    dets = decode(outputs)
    aps = []
    tp_at, fp_at, n_gt = 0, 0, 0
    for c in range(DET_CLASSES):
        records = []  # (score, is_tp)
        gts = 0
        for i, d in enumerate(dets):
            gt = objects[i][objects[i][:, 0] == c][:, 1:]
            gts += len(gt)
            used = np.zeros(len(gt), bool)
            for det in d[d[:, 0] == c]:
                ious = iou(gt, det[2:]) if len(gt) else np.zeros(0)
                j = int(np.argmax(ious)) if len(ious) else -1
                hit = j >= 0 and ious[j] >= 0.5 and not used[j]
                if hit:
                    used[j] = True
                records.append((det[1], hit))
        n_gt += gts
        records.sort(key=lambda r: -r[0])
        hits = np.array([r[1] for r in records], bool)
        tp_at += int(sum(h for s, h in records if s >= 0.5))
        fp_at += int(sum(not h for s, h in records if s >= 0.5))
        if gts == 0:
            continue
        tp = np.cumsum(hits)
        precision = tp / np.arange(1, len(hits) + 1)
        recall = tp / gts
        mrec = np.concatenate([[0], recall, [1]])
        mpre = np.concatenate([[0], precision, [0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
        aps.append(float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1])))
    return {"mAP50": float(np.mean(aps)), "precision@0.5": tp_at / max(tp_at + fp_at, 1),
            "recall@0.5": tp_at / max(n_gt, 1)}


def train_detector(out: Path, seed: int, n_train: int, epochs: int, n_calib: int, n_test: int,
                   n_eval: int) -> Facts:
    splits = digit_splits()
    x_train, o_train = render_canvases(*splits["train"], n_train, seed=seed + 1)
    x_calib, o_calib = render_canvases(*splits["calib"], n_calib, seed=seed + 2)
    x_test, o_test = render_canvases(*splits["test"], n_eval, seed=seed + 3)
    log(f"ssd_digits: {n_train} training canvases from {len(splits['train'][1])} digits, "
        f"{n_eval} held-out from {len(splits['test'][1])}")
    targets = [tuple(torch.from_numpy(a) for a in level) for level in detector_targets(o_train)]
    xt = torch.from_numpy(x_train)

    def loss_fn(model, idx):
        loss = torch.zeros(())
        npos = 0
        for (logits, boxes), (stride_name, stride), (cls, box, pos) in zip(model.raw(xt[idx]), LEVELS, targets):
            cls, box, pos = cls[idx], box[idx], pos[idx]
            loss = loss + focal_loss(logits, cls)
            mask = pos[:, None].expand_as(box)
            loss = loss + 2.0 * F.smooth_l1_loss(boxes[mask] / stride, box[mask] / stride, reduction="sum") / 4
            npos += int(pos.sum())
        return loss / max(npos, 1)

    base.seed_everything(seed)
    model = SSDDigits()
    seconds = fit(model, loss_fn, n_train, epochs, seed)
    with torch.no_grad():
        ref = dict(zip(SSDDigits.OUTPUTS, (t.numpy() for t in model(torch.from_numpy(x_test)))))
    metrics = detection_metrics(ref, o_test)
    log(f"  torch held-out: {metrics}")
    path = out / "ssd_digits.onnx"
    export(model, path, (1, CANVAS, CANVAS), SSDDigits.OUTPUTS)
    metrics = detection_metrics(run_ort(path, x_test), o_test)
    if metrics["mAP50"] < MIN_MAP50:
        raise RuntimeError(f"ssd_digits: held-out mAP50 {metrics['mAP50']:.3f} below {MIN_MAP50}")
    facts = verify(path, model, (1, CANVAS, CANVAS), SSDDigits.OUTPUTS, x_test[:n_test], metrics, seconds)
    save(out / "ssd_digits_calib.npz", input=x_calib, objects=o_calib)
    save(out / "ssd_digits_test.npz", input=x_test[:n_test], objects=o_test[:n_test])
    return facts


# --------------------------------------------------------------------------
# O-Net: rendered face crops -> face / not, box offsets, five landmarks
# --------------------------------------------------------------------------

CROP = 48
SUPER = 2  # rendered at 2x and averaged down (anti-aliased edges)
MIN_FACE_ACCURACY = 0.95
MAX_LANDMARK_NME = 0.12


def _ellipse(gx, gy, cx, cy, a, b, theta):
    c, s = math.cos(theta), math.sin(theta)
    u, v = (gx - cx) * c + (gy - cy) * s, -(gx - cx) * s + (gy - cy) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def render_face_crops(n: int, seed: int) -> dict[str, np.ndarray]:
    """n crops [n, 3, 48, 48], (pixel - 127.5) / 128, half of them faces. A face: a skin-coloured rotated
    ellipse with two eyes, eyebrows, a nose and a mouth whose five landmarks (eye centres, nose tip, mouth
    corners) jitter independently of the ellipse; the crop around it is jittered like MTCNN's positives
    (IoU >= 0.65). Non-faces: background clutter (featureless skin-coloured ellipses among it) or a face
    mostly outside the crop (IoU < 0.3). Also returns face (0 / 1), box (x1, y1, x2, y2 offsets / 48 as
    MTCNN's regression targets) and landmarks (x1..x5, y1..y5 / 48), the last two zero for non-faces."""
    rng = np.random.default_rng(seed)
    size = CROP * SUPER
    g = (np.arange(size) + 0.5) / SUPER
    gx, gy = np.meshgrid(g, g)
    images = np.zeros((n, 3, CROP, CROP), np.float32)
    face = np.zeros(n, np.int64)
    boxes = np.zeros((n, 4), np.float32)
    marks = np.zeros((n, 10), np.float32)
    for i in range(n):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (gx * math.cos(rng.uniform(0, 6.3)) + gy * math.sin(rng.uniform(0, 6.3))) / (CROP * 1.5) + 0.5
        img = c0[:, None, None] * (1 - t) + c1[:, None, None] * t
        for _ in range(int(rng.integers(0, 4))):  # clutter
            colour = rng.uniform(0, 255, 3) if rng.random() < 0.6 else np.array([220, 170, 130]) * rng.uniform(0.6, 1.1)
            m = _ellipse(gx, gy, *rng.uniform(0, CROP, 2), *rng.uniform(4, 20, 2), rng.uniform(0, 3.2))
            if rng.random() < 0.4:
                x0, y0 = rng.uniform(-10, CROP, 2)
                m = (gx > x0) & (gx < x0 + rng.uniform(4, 30)) & (gy > y0) & (gy < y0 + rng.uniform(4, 30))
            img[:, m] = colour[:, None]
        kind = ("face", "none", "outside")[0 if i % 2 == 0 else int(rng.integers(1, 3))]
        if kind != "none":
            while True:
                a = rng.uniform(13, 22)
                b = a * rng.uniform(1.15, 1.35)
                theta = rng.uniform(-0.35, 0.35)
                ex = math.sqrt((a * math.cos(theta)) ** 2 + (b * math.sin(theta)) ** 2)
                ey = math.sqrt((a * math.sin(theta)) ** 2 + (b * math.cos(theta)) ** 2)
                spread = 5 if kind == "face" else 40
                cx, cy = CROP / 2 + rng.uniform(-spread, spread, 2)
                box = np.array([cx - ex, cy - ey, cx + ex, cy + ey])
                overlap = iou(box, np.array([0, 0, CROP, CROP], float))
                if (kind == "face" and overlap >= 0.65) or (kind == "outside" and 0.05 < overlap < 0.3):
                    break
            skin = np.array([225, 180, 140]) * rng.uniform(0.45, 1.1) + rng.normal(0, 8, 3)
            img[:, _ellipse(gx, gy, cx, cy, a, b, theta)] = np.clip(skin, 0, 255)[:, None]
            c, s = math.cos(theta), math.sin(theta)
            eye_dx, eye_dy = rng.uniform(0.3, 0.45), rng.uniform(-0.35, -0.15)
            nose_dx, nose_dy = rng.uniform(-0.12, 0.12), rng.uniform(0.0, 0.2)
            mouth_dx, mouth_dy = rng.uniform(0.2, 0.38), rng.uniform(0.38, 0.55)
            local = [(-eye_dx * a, eye_dy * b), (eye_dx * a, eye_dy * b), (nose_dx * a, nose_dy * b),
                     (-mouth_dx * a + nose_dx * a * 0.5, mouth_dy * b), (mouth_dx * a + nose_dx * a * 0.5, mouth_dy * b)]
            points = [(cx + u * c - v * s, cy + u * s + v * c) for u, v in local]
            dark = skin * rng.uniform(0.1, 0.35)
            for px, py in points[:2]:  # eyes and eyebrows
                img[:, _ellipse(gx, gy, px, py, 0.13 * a, 0.07 * b, theta)] = dark[:, None]
                brow = _ellipse(gx, gy, px - 0.12 * b * s, py - 0.12 * b * c, 0.16 * a, 0.03 * b, theta)
                img[:, brow] = dark[:, None]
            img[:, _ellipse(gx, gy, *points[2], 0.07 * a, 0.05 * b, theta)] = (skin * 0.6)[:, None]
            (mx0, my0), (mx1, my1) = points[3], points[4]
            dx, dy = mx1 - mx0, my1 - my0
            along = np.clip(((gx - mx0) * dx + (gy - my0) * dy) / (dx * dx + dy * dy), 0, 1)
            lip = np.hypot(gx - (mx0 + along * dx), gy - (my0 + along * dy)) <= 0.045 * b + 0.5
            img[:, lip] = np.array([150, 40, 50])[:, None] * rng.uniform(0.5, 1.0)
            if kind == "face":
                face[i] = 1
                boxes[i] = box / CROP - np.array([0, 0, 1, 1])
                marks[i] = np.array([p[0] for p in points] + [p[1] for p in points]) / CROP
        img = img.reshape(3, CROP, SUPER, CROP, SUPER).mean(axis=(2, 4)) + rng.normal(0, 4, (3, CROP, CROP))
        images[i] = (np.round(np.clip(img, 0, 255)) - 127.5) / 128
    return {"input": images, "face": face, "box": boxes, "landmarks": marks}


class ONetFaces(nn.Module):
    """MTCNN O-Net layout, narrower: conv3x3 (no padding) + BN + PReLU 16, MaxPool 3/2 ceil; 32, MaxPool 3/2 ceil;
    32, MaxPool 2/2; conv2x2 64 + BN + PReLU; Flatten (64x3x3) -> Linear 96 + PReLU; heads Linear 96 -> 2
    (Softmax), 96 -> 4 (box offsets), 96 -> 10 (landmarks)."""

    OUTPUTS = ["prob", "box", "landmarks"]

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(3, 16, 3, act=nn.PReLU, padding=0), nn.MaxPool2d(3, 2, ceil_mode=True),
            *conv_bn_relu(16, 32, 3, act=nn.PReLU, padding=0), nn.MaxPool2d(3, 2, ceil_mode=True),
            *conv_bn_relu(32, 32, 3, act=nn.PReLU, padding=0), nn.MaxPool2d(2, 2, ceil_mode=True),
            *conv_bn_relu(32, 64, 2, act=nn.PReLU, padding=0))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * 3 * 3, 96), nn.PReLU(96))
        self.cls, self.box, self.landmarks = nn.Linear(96, 2), nn.Linear(96, 4), nn.Linear(96, 10)

    def raw(self, x: torch.Tensor):
        h = self.fc(self.features(x))
        return self.cls(h), self.box(h), self.landmarks(h)

    def forward(self, x: torch.Tensor):
        logits, box, marks = self.raw(x)
        return torch.softmax(logits, dim=1), box, marks


def face_metrics(outputs: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict[str, float]:
    """Face / not accuracy; on the faces: mean IoU of the regressed box, landmark NME (mean point error over
    the inter-ocular distance)."""
    is_face = truth["face"] == 1
    acc = float(np.mean(outputs["prob"].argmax(1) == truth["face"]))
    unit = np.array([0, 0, 1, 1], np.float32)
    ious = iou(outputs["box"][is_face] + unit, truth["box"][is_face] + unit)
    pred = outputs["landmarks"][is_face].reshape(-1, 2, 5)
    true = truth["landmarks"][is_face].reshape(-1, 2, 5)
    err = np.linalg.norm(pred - true, axis=1).mean(1)
    ocular = np.linalg.norm(true[:, :, 0] - true[:, :, 1], axis=1)
    return {"face accuracy": acc, "box mean IoU": float(ious.mean()), "landmark NME": float(np.mean(err / ocular))}


def train_onet(out: Path, seed: int, n_train: int, epochs: int, n_calib: int, n_test: int, n_eval: int) -> Facts:
    train = render_face_crops(n_train, seed=seed + 11)
    calib = render_face_crops(n_calib, seed=seed + 12)
    test = render_face_crops(n_eval, seed=seed + 13)
    log(f"onet_faces: {n_train} training crops, {n_eval} held-out")
    xt, ft = torch.from_numpy(train["input"]), torch.from_numpy(train["face"])
    bt, lt = torch.from_numpy(train["box"]), torch.from_numpy(train["landmarks"])

    def loss_fn(model, idx):
        logits, box, marks = model.raw(xt[idx])
        pos = ft[idx] == 1
        loss = F.cross_entropy(logits, ft[idx])
        if pos.any():  # MTCNN's O-Net weights: 1 (face), 0.5 (box), 1 (landmarks)
            loss = loss + 0.5 * 100 * F.mse_loss(box[pos], bt[idx][pos]) + 100 * F.mse_loss(marks[pos], lt[idx][pos])
        return loss

    base.seed_everything(seed)
    model = ONetFaces()
    seconds = fit(model, loss_fn, n_train, epochs, seed)
    with torch.no_grad():
        ref = dict(zip(ONetFaces.OUTPUTS, (t.numpy() for t in model(torch.from_numpy(test["input"])))))
    log(f"  torch held-out: {face_metrics(ref, test)}")
    path = out / "onet_faces.onnx"
    export(model, path, (3, CROP, CROP), ONetFaces.OUTPUTS)
    metrics = face_metrics(run_ort(path, test["input"]), test)
    if metrics["face accuracy"] < MIN_FACE_ACCURACY or metrics["landmark NME"] > MAX_LANDMARK_NME:
        raise RuntimeError(f"onet_faces: held-out {metrics} below the minimum")
    facts = verify(path, model, (3, CROP, CROP), ONetFaces.OUTPUTS, test["input"][:n_test], metrics, seconds)
    save(out / "onet_faces_calib.npz", **calib)
    save(out / "onet_faces_test.npz", **{k: v[:n_test] for k, v in test.items()})
    return facts


def save(path: Path, **arrays: np.ndarray) -> None:
    np.savez_compressed(path, **arrays)
    log(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


# --------------------------------------------------------------------------
# README section
# --------------------------------------------------------------------------


def render_section(facts: list[Facts], sizes: dict[str, int], seconds: float, args) -> str:
    def fmt(v: float) -> str:
        return f"{v * 100:.1f} %" if v <= 1.0 and not isinstance(v, int) else f"{v:.3g}"

    rows = "\n".join(
        f"| `{f.file}` | {len(f.outputs)}: {', '.join(f'`{o}` (rms {f.output_norms[o]:.3g})' for o in f.outputs)} | "
        f"{f.params:,} | {f.macs / 1e6:.2f} M | {f.nodes} | {f.bn_nodes} | {f.size_bytes / 1024:.0f} KiB | "
        f"{'; '.join(f'{k} {v:.3f}' for k, v in f.metrics.items())} | {f.train_seconds:.0f} s |"
        for f in facts)
    data_rows = "\n".join(f"| `{name}` | {n} | {sizes[name] / 1024:.0f} KiB |" for name, n in (
        ("ssd_digits_calib.npz", args.det_calib), ("ssd_digits_test.npz", args.det_test),
        ("onet_faces_calib.npz", args.onet_calib), ("onet_faces_test.npz", args.onet_test)))
    return f"""{README_BEGIN}
## Multi-output models

Two small trained networks with several graph outputs of very different scales, for per-output
fidelity (a class-score map near 1 next to a box map in the tens: one cosine over both is the box
map's). They are in the real-export corpus too (`edgeopt/zoo/corpus.py`), so every corpus pass runs on
them. Written by `tools/train_multihead_models.py` (`make sample-models` runs it after
`tools/train_sample_models.py`), exported like the models above (TorchScript exporter, opset {OPSET},
BatchNormalization kept, dynamic batch `N`), and checked the same way (full onnx checker; onnxruntime
reproduces PyTorch's outputs to {OUTPUT_ATOL:g} of each output's scale; batch 1 and 5 run).

| file | outputs (RMS on the test file) | params | MACs | nodes | BN nodes | size | held-out accuracy (onnxruntime) | training |
|---|---|---|---|---|---|---|---|---|
{rows}

- `ssd_digits.onnx`: a RetinaNet / FCOS-style detector. Input `input` [N, 1, 64, 64], an 8-bit
  greyscale canvas / 255 holding one to three of scikit-learn's digits (the sample models' stratified
  split: training canvases only from training digits, held-out ones only from test digits), each
  resized to a 12-30 pixel square with a random intensity on a noisy gradient. Backbone conv3x3 + BN +
  ReLU 16 (stride 2), 24 (stride 2), 24, 32 (stride 2: level p3, 8x8 cells of 8 pixels), 48 (stride 2:
  level p4, 4x4 cells of 16 pixels). Each level has a class tower (conv3x3 + BN + ReLU, conv1x1 to 10,
  Sigmoid: `score_p3`, `score_p4`) and a box tower (conv3x3 + BN + ReLU, conv1x1 to 4, ReLU, times the
  stride: `box_p3`, `box_p4`, the distances in pixels from the cell centre to the left, top, right
  and bottom edges of the digit's ink). Digits up to 17 pixels are p3's, larger ones p4's; positive
  cells by FCOS centre sampling (inside the box, within 1.5 strides of its centre). Trained
  {args.det_epochs} epochs on {args.det_train} canvases (focal loss for the scores, smooth L1 in
  stride units for the boxes, AdamW, one-cycle). Accuracy: mAP at IoU 0.5 (VOC all-point, mean over
  the ten classes; each cell's best class, class-wise NMS at 0.5) and precision / recall of the
  detections scoring 0.5 or more, on {args.det_eval} held-out canvases.
- `onet_faces.onnx`: MTCNN's O-Net layout, narrower (conv3x3 16 / 32 / 32 with MaxPool 3/2, 3/2, 2/2,
  ceil mode, conv2x2 64, Linear 96; BN and PReLU after every conv, PReLU after the Linear). Input
  `input` [N, 3, 48, 48], (pixel - 127.5) / 128 as MTCNN. Outputs `prob` [N, 2] (softmax: not a face,
  a face), `box` [N, 4] (MTCNN's box regression: (x1, y1, x2 - 48, y2 - 48) / 48 of the face box in
  the crop, values near 0) and `landmarks` [N, 10] (eye centres, nose tip, mouth corners; x1..x5 then
  y1..y5, / 48). The crops are rendered: a skin-coloured rotated ellipse with eyes, eyebrows, a nose
  and a mouth whose five points move independently of the ellipse, on a gradient with clutter; half
  of them faces (crop jittered around the face, IoU >= 0.65), the rest clutter alone (featureless
  skin-coloured ellipses included) or a face mostly outside the crop (IoU < 0.3). Trained
  {args.onet_epochs} epochs on {args.onet_train} crops (cross-entropy on every crop, squared error on
  the faces' box and landmarks, weighted 1 / 0.5 / 1 as O-Net). Accuracy on {args.onet_eval}
  held-out crops: face / not top-1; on the faces, mean IoU of the regressed box and the landmarks'
  normalized mean error (mean point distance over the inter-ocular distance).

| data | samples | size |
|---|---|---|
{data_rows}

The data files hold `input` (float32, the model's input, batch first) and the ground truth under keys
that are no model input (edgeopt ignores them): `objects` [N, 3, 5] (class, x1, y1, x2, y2 in pixels;
rows of -1 pad) for the detector; `face` [N], `box` [N, 4] and `landmarks` [N, 10] (zeros for
non-faces) for O-Net. No `labels`: edgeopt's accuracy is top-1 against one class per sample, which
these outputs are not. The test files are the first samples of the held-out sets above (different
seeds from training and calibration). Training took {seconds:.0f} s in all on a 2-core machine shared
with other work; seeds are fixed.
{README_END}
"""


def write_section(readme: Path, section: str) -> None:
    text = readme.read_text() if readme.exists() else ""
    if README_BEGIN in text and README_END in text:
        head, rest = text.split(README_BEGIN, 1)
        tail = rest.split(README_END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    readme.write_text(text)
    log(f"wrote the multi-output section of {readme}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=base.REPO_ROOT / "sample_models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["ssd", "onet"], help="train one of the two (the README needs both)")
    parser.add_argument("--det-train", type=int, default=6000)
    parser.add_argument("--det-epochs", type=int, default=16)
    parser.add_argument("--det-calib", type=int, default=32)
    parser.add_argument("--det-test", type=int, default=64)
    parser.add_argument("--det-eval", type=int, default=1000)
    parser.add_argument("--onet-train", type=int, default=12000)
    parser.add_argument("--onet-epochs", type=int, default=16)
    parser.add_argument("--onet-calib", type=int, default=32)
    parser.add_argument("--onet-test", type=int, default=64)
    parser.add_argument("--onet-eval", type=int, default=1000)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    facts = []
    if args.only in (None, "ssd"):
        facts.append(train_detector(args.out, base.SEED, args.det_train, args.det_epochs, args.det_calib,
                                    args.det_test, args.det_eval))
    if args.only in (None, "onet"):
        facts.append(train_onet(args.out, base.SEED, args.onet_train, args.onet_epochs, args.onet_calib,
                                args.onet_test, args.onet_eval))
    if args.only is None:
        sizes = {p.name: p.stat().st_size for p in args.out.glob("*.npz")}
        write_section(args.out / "README.md", render_section(facts, sizes, time.monotonic() - started, args))
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
