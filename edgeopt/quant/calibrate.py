"""Static int8 through onnxruntime.quantization: activation ranges computed here in bounded memory, QDQ output.

onnxruntime's quantizer does the QDQ placement (which tensors of Conv / MatMul /
Add / pooling ... get QuantizeLinear / DequantizeLinear, int32 biases, Relu and
Clip absorbed). Its calibrators keep every calibrated tensor of every batch
(histograms) or run the whole calibration batch at once, which grew PP-OCRv4
det at 640x640 past 24 GB; so the ranges are computed here, batch by batch in
bounded memory (edgeopt.graph.activations), and handed to the quantizer through
its calibration cache file (computed once, so re-quantizing with other
exclusions does not re-run the model). The numbers are onnxruntime's: the same
tensors (its own selection), the same kernels (its calibrators' unoptimized
sessions), the same reductions:

- minmax: ReduceMin / ReduceMax of each tensor per run, the running min / max
  of those (a min of mins is the min: the same ranges as all at once);
- percentile, entropy: a first pass for each tensor's range, then histograms
  with that fixed bin layout summed over the runs (the counts are additive), so
  the histogram is the one onnxruntime built over all samples at once; its own
  percentile / entropy search runs on it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from edgeopt.graph.activations import Stream, footprint
from edgeopt.graph.io import save_model
from edgeopt.verify.feeds import sample_count, take

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def _ort_quant():
    from onnxruntime import quantization as oq

    return oq


# onnxruntime's calibrator settings for each method (create_calibrator's defaults; quantize_static passes
# no symmetric / bin options): (histogram method, symmetric, bins, quantized bins)
_HISTOGRAM = {"percentile": ("percentile", True, 2048, 128), "entropy": ("entropy", False, 128, 128)}


def calibration_tensors(model_path: Path) -> tuple[list[str], dict[str, int]]:
    """The tensors onnxruntime's calibrators calibrate (its own selection, on its shape-inferred model), sorted,
    with their element types."""
    from onnxruntime.quantization.calibrate import CalibraterBase
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    inferred = load_model_with_shape_infer(Path(model_path))
    tensors, infos = CalibraterBase.select_tensors_to_calibrate(SimpleNamespace(op_types_to_calibrate=None), inferred)
    return sorted(tensors), {t: infos[t].type.tensor_type.elem_type for t in tensors}


def _reducing_model(model: onnx.ModelProto, tensors: list[str], absolute: bool) -> tuple[onnx.ModelProto, dict]:
    """The model with ReduceMin / ReduceMax (and ReduceMin of Abs) of each tensor as outputs, each pair right
    after the tensor's producer (as onnxruntime's MinMaxCalibrater places them, so tensors die as early)."""
    wanted = set(tensors)
    outputs: dict[str, tuple[str, str, str | None]] = {}

    def reducers(name: str) -> list[onnx.NodeProto]:
        tag = f"{name}__edgeopt_calib"
        lo, hi = f"{tag}_min", f"{tag}_max"
        nodes = [helper.make_node("ReduceMin", [name], [lo], keepdims=1, name=lo),
                 helper.make_node("ReduceMax", [name], [hi], keepdims=1, name=hi)]
        absmin = None
        if absolute:
            absmin = f"{tag}_absmin"
            nodes += [helper.make_node("Abs", [name], [f"{tag}_abs"], name=f"{tag}_abs"),
                      helper.make_node("ReduceMin", [f"{tag}_abs"], [absmin], keepdims=1, name=absmin)]
        outputs[name] = (lo, hi, absmin)
        return nodes

    reduced = onnx.ModelProto()
    reduced.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    for vi in reduced.graph.input:
        if vi.name in wanted:
            nodes += reducers(vi.name)
    for node in model.graph.node:
        nodes.append(node)
        for out in node.output:
            if out in wanted and out not in outputs:
                nodes += reducers(out)
    del reduced.graph.node[:]
    reduced.graph.node.extend(nodes)
    del reduced.graph.output[:]
    for name in tensors:
        for out in outputs.get(name, ()):
            if out:
                reduced.graph.output.add().name = out
    return reduced, outputs


def _ranges(model: onnx.ModelProto, tensors: list[str], feeds: dict, absolute: bool, what: str) -> dict:
    """Per tensor (min, max, min |x| or None) over every sample, as numpy scalars of the tensor's type."""
    reduced, outputs = _reducing_model(model, tensors, absolute)
    names = [o for name in tensors for o in outputs.get(name, ()) if o]
    # the reductions are tiny: the footprint that matters is the model's own working set
    fp = footprint(model, feeds)
    fp.sizes.update({n: 0 for n in names})
    stream = Stream(reduced, names, feeds, what=what, optimized=False, fp=fp)
    found: dict[str, np.ndarray] = {}
    for piece in stream:
        for k, v in piece.values.items():
            v = np.asarray(v).reshape(-1)
            found[k] = v if k not in found else np.fmin(found[k], v) if not k.endswith("_max") \
                else np.fmax(found[k], v)
    out = {}
    for name in tensors:
        lo, hi, absmin = outputs[name]
        out[name] = tuple(found[k][0] if k else None for k in (lo, hi, absmin))
    return out


def _histograms(model: onnx.ModelProto, tensors: list[str], ranges: dict, feeds: dict, method: str,
                what: str) -> dict:
    """onnxruntime's HistogramCollector.histogram_dict, built run by run on a bin layout fixed by the ranges."""
    kind, symmetric, bins, _ = _HISTOGRAM[method]
    hists: dict[str, np.ndarray] = {}
    layout: dict[str, tuple] = {}
    for name in tensors:
        lo, hi, absmin = ranges[name]
        if symmetric:  # collect_absolute_value: np.histogram(|x|, bins) over min |x| .. max |x|
            layout[name] = (absmin, np.maximum(np.abs(lo), np.abs(hi)))
        else:  # collect_value: over -threshold .. threshold, threshold = max(|min|, |max|)
            threshold = np.array(max(abs(lo), abs(hi)), dtype=np.asarray(lo).dtype)
            layout[name] = (-threshold, threshold)
    edges: dict[str, np.ndarray] = {}
    for piece in Stream(model, tensors, feeds, what=what, optimized=False):
        for name, arr in piece.values.items():
            arr = np.asarray(arr).reshape(-1)
            if symmetric:
                arr = np.absolute(arr)
            counts, e = np.histogram(arr, bins, range=layout[name])
            hists[name] = counts if name not in hists else hists[name] + counts
            edges.setdefault(name, e)
            del arr
    out = {}
    for name in tensors:
        lo, hi, _ = ranges[name]
        if symmetric:
            out[name] = (hists[name], edges[name].astype(np.asarray(lo).dtype), lo, hi)
        else:
            out[name] = (hists[name], edges[name], lo, hi, layout[name][1])
    return out


def calibrate(model: onnx.ModelProto, model_path: Path, feeds: dict[str, np.ndarray], method: str = "minmax",
              percentile: float = 99.999):
    """onnxruntime TensorsData of every tensor its quantizer calibrates, computed in bounded memory."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCollector, TensorsData

    tensors, _ = calibration_tensors(model_path)
    what = f"calibration ({method}) on {sample_count(feeds)} samples"
    absolute = method in _HISTOGRAM and _HISTOGRAM[method][1]
    ranges = _ranges(model, tensors, feeds, absolute, what)
    if method == "minmax":
        return TensorsData(CalibrationMethod.MinMax,
                           {t: (np.array([lo]), np.array([hi])) for t, (lo, hi, _) in ranges.items()})
    kind, symmetric, bins, quantized = _HISTOGRAM[method]
    collector = HistogramCollector(method=kind, symmetric=symmetric, num_bins=bins, num_quantized_bins=quantized,
                                   percentile=percentile, scenario="same")
    collector.histogram_dict = _histograms(model, tensors, ranges, feeds, method, what)
    cal = CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.Entropy
    return TensorsData(cal, collector.compute_collection_result())


class ArrayReader:
    """onnxruntime CalibrationDataReader over in-memory arrays, in batches of `batch` (for running
    onnxruntime's own calibrators, e.g. to compare with `calibrate`)."""

    def __init__(self, feeds: dict[str, np.ndarray], batch: int):
        self.feeds = feeds
        self.batch = batch
        self.n = sample_count(feeds)
        self.pos = 0

    def get_next(self):
        if self.pos >= self.n:
            return None
        out = take(self.feeds, self.pos, self.pos + self.batch)
        self.pos += self.batch
        return out

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self):
        return -(-self.n // self.batch)

    def rewind(self):
        self.pos = 0


class StaticQuantizer:
    """Calibrate a float model once, then quantize it to QDQ any number of times."""

    def __init__(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], method: str = "minmax",
                 percentile: float = 99.999, per_channel: bool = True, reduce_range: bool = False,
                 activation_type: str = "uint8"):
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {method!r}")
        self.model = model
        self.feeds = feeds
        self.method = method
        self.percentile = percentile
        self.per_channel = per_channel
        self.reduce_range = reduce_range
        self.activation_type = activation_type
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeopt-quant-")
        self.cache = Path(self._tmp.name) / "ranges.json"
        # A path, not the ModelProto: onnxruntime's in-memory route reloads external data from a
        # temporary folder it has already removed.
        self.model_path = Path(self._tmp.name) / "float.onnx"
        save_model(model, self.model_path, sync=False)  # external data past 2 GiB

    def close(self):
        self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def quantize(self, exclude: list[str] | None = None, op_types: list[str] | None = None) -> onnx.ModelProto:
        """QDQ model with the given node names left in float (and only op_types quantized, if given)."""
        oq = _ort_quant()
        method = {"minmax": oq.CalibrationMethod.MinMax, "percentile": oq.CalibrationMethod.Percentile,
                  "entropy": oq.CalibrationMethod.Entropy}[self.method]
        act = oq.QuantType.QUInt8 if self.activation_type == "uint8" else oq.QuantType.QInt8
        extra = {"CalibPercentile": self.percentile} if self.method == "percentile" else {}
        if self.activation_type == "int8":
            extra["ActivationSymmetric"] = True
        out = Path(self._tmp.name) / "quantized.onnx"
        logger = logging.getLogger()
        level = logger.level
        logger.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint on every call
        # its calibration sessions log onnxruntime warnings (unused initializers) to stderr
        ort.set_default_logger_severity(3)
        # The histogram calibrators print progress to stdout, which must stay parseable (--format json).
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter):
                if not self.cache.exists():  # once: later calls (other exclusions) reuse the ranges
                    oq.calibrate.save_tensors_data(
                        calibrate(self.model, self.model_path, self.feeds, self.method, self.percentile), self.cache)
                oq.quantize_static(
                    self.model_path, out, None, quant_format=oq.QuantFormat.QDQ, per_channel=self.per_channel,
                    reduce_range=self.reduce_range, activation_type=act, weight_type=oq.QuantType.QInt8,
                    nodes_to_exclude=list(exclude or []), op_types_to_quantize=list(op_types or []),
                    calibrate_method=method, extra_options=extra, calibration_cache_path=self.cache)
        finally:
            logger.setLevel(level)
            ort.set_default_logger_severity(2)  # onnxruntime's default: warnings
        return onnx.load(str(out))
