"""Shared quantization math: scales and zero points, int4 packing, k-means codebooks, calibration.

Pure numpy; the passes in edgeopt/passes/quantize_*.py build graphs from it.
"""

from edgeopt.quant.kmeans import kmeans_1d
from edgeopt.quant.pack import pack_int4, unpack_int4
from edgeopt.quant.qparams import QParams, compute_qparams, dequantize, quantize, qrange

__all__ = ["QParams", "compute_qparams", "dequantize", "kmeans_1d", "pack_int4", "qrange", "quantize",
           "unpack_int4"]
