"""Factorizing convolution weights by SVD: depthwise-separable and spatially separable splits.

Pure numpy math over weight arrays and sampled input patches; the passes
(`split_depthwise`, `split_spatial`) do the graph editing.

- `geometry`: a Conv's kernel / strides / pads / dilations, output sizes, MACs.
- `patches`: input patches a Conv sees on calibration data (im2col, sampled).
- `lowrank`: whitening by input statistics, refitting a linear map by least squares.
- `depthwise`, `spatial`: the two factorizations, weights-only or data-weighted.
"""

from edgeopt.factorize.depthwise import DepthwiseSplit, depthwise_weight_errors, split_depthwise
from edgeopt.factorize.geometry import ConvGeometry
from edgeopt.factorize.patches import sample_patches
from edgeopt.factorize.spatial import SpatialSplit, spatial_weight_errors, split_spatial

__all__ = [
    "ConvGeometry",
    "DepthwiseSplit",
    "SpatialSplit",
    "depthwise_weight_errors",
    "sample_patches",
    "spatial_weight_errors",
    "split_depthwise",
    "split_spatial",
]
