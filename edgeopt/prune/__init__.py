"""Structured channel pruning on ONNX graphs.

- `groups`: which channels are tied together (residual Add / Mul, Concat,
  depthwise convs, Flatten then Gemm, shared weights) and which cannot be
  pruned, with the reason (DepGraph's idea, on the ONNX graph).
- `criteria`: channel importance (l1, l2, bn_scale, apoz) and ThiNet's
  greedy selection by reconstruction error.
- `shrink`: physically remove channels from every node that touches them.
- `reconstruct`: least-squares refit of the layers that read pruned channels.
- `plan`: from parameters (ratio, round_to, min_channels, exclude) to channel
  counts per group; `core.prune_model` ties it together for the pass and
  the sensitivity scan.
"""

from edgeopt.prune.groups import ChannelGroup, GraphAnalysis, analyze

__all__ = ["ChannelGroup", "GraphAnalysis", "analyze"]
