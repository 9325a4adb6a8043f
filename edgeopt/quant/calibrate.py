"""Static int8 through onnxruntime.quantization: data reader, one calibration reused, QDQ output.

onnxruntime's quantizer does the QDQ placement (which tensors of Conv / MatMul /
Add / pooling ... get QuantizeLinear / DequantizeLinear, int32 biases, Relu and
Clip absorbed); this module feeds it our data, calibrates once (the ranges are
cached in a file, so re-quantizing with other exclusions does not re-run the
model), and returns ModelProtos.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgeopt.graph.io import save_model
from edgeopt.verify.feeds import sample_count, take

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def _ort_quant():
    from onnxruntime import quantization as oq

    return oq


class ArrayReader:
    """onnxruntime CalibrationDataReader over in-memory arrays, in batches of `batch`."""

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

    def __init__(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], batch: int, method: str = "minmax",
                 percentile: float = 99.999, per_channel: bool = True, reduce_range: bool = False,
                 activation_type: str = "uint8"):
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {method!r}")
        self.model = model
        self.feeds = feeds
        self.batch = batch
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
        reader = ArrayReader(self.feeds, self.batch)
        logger = logging.getLogger()
        level = logger.level
        logger.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint on every call
        # its calibration sessions log onnxruntime warnings (unused initializers) to stderr
        ort.set_default_logger_severity(3)
        # The histogram calibrators print progress to stdout, which must stay parseable (--format json).
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter):
                oq.quantize_static(
                    self.model_path, out, reader, quant_format=oq.QuantFormat.QDQ, per_channel=self.per_channel,
                    reduce_range=self.reduce_range, activation_type=act, weight_type=oq.QuantType.QInt8,
                    nodes_to_exclude=list(exclude or []), op_types_to_quantize=list(op_types or []),
                    calibrate_method=method, extra_options=extra, calibration_cache_path=self.cache)
        finally:
            logger.setLevel(level)
            ort.set_default_logger_severity(2)  # onnxruntime's default: warnings
        return onnx.load(str(out))
