"""Channel importance per group: higher is more important, the lowest go first.

- l1 / l2: norm of each output channel's weights in every producing layer
  (Li et al. 2017, "Pruning Filters for Efficient ConvNets").
- bn_scale: |gamma| of the BatchNormalization after each producing layer
  (Liu et al. 2017, "Network Slimming"); a layer without one uses l1.
- apoz: 1 - Average Percentage of Zeros of the channel after its ReLU on
  the calibration data (Hu et al. 2016); a group with no ReLU-like
  activation uses the mean |activation| of its producers' outputs.
- thinet: the order of ThiNet's greedy selection (Luo et al. 2017): the
  channel whose removal adds least to the error of the *next* layers'
  outputs goes first, measured on the calibration data.

In a group of several producers (a residual group), each producer's scores
are divided by their mean before averaging, so one layer's weight scale
does not decide for the others.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgeopt.graph.edit import const_array
from edgeopt.prune.groups import ChannelGroup, GraphAnalysis, node_label
from edgeopt.prune.im2col import conv_geometry, patches, sample_positions
from edgeopt.prune.probe import Probe, subsample

CRITERIA = ("l1", "l2", "bn_scale", "apoz", "thinet")
DATA_CRITERIA = ("apoz", "thinet")
ZERO_ACTIVATIONS = {"Relu", "Clip"}


def _normalized(scores: list[np.ndarray]) -> np.ndarray:
    out = []
    for s in scores:
        s = np.asarray(s, dtype=np.float64)
        mean = float(np.mean(s))
        out.append(s / mean if mean > 0 else s)
    return np.mean(out, axis=0)


def folded_scale(node) -> np.ndarray | None:
    """gamma / sqrt(var + eps) of the BatchNormalization that alone reads the node's output, if any.

    Weight magnitudes mean what they say only once a BN is folded into them; with this factor,
    l1 / l2 and sparsify rank the same whether or not fold_batchnorm ran first.
    """
    uses = list(node.outputs[0].uses())
    if len(uses) != 1 or uses[0].node.op_type != "BatchNormalization" or uses[0].idx != 0:
        return None
    bn = uses[0].node
    gamma, var = const_array(bn.inputs[1]), const_array(bn.inputs[4])
    if gamma is None or var is None:
        return None
    eps = bn.attributes.get("epsilon")
    return gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + (eps.value if eps is not None else 1e-5))


def _rows(group_source) -> np.ndarray:
    w = const_array(group_source.weight).astype(np.float64)
    rows = np.moveaxis(w, group_source.out_axis, 0).reshape(w.shape[group_source.out_axis], -1)
    scale = folded_scale(group_source.node)
    return rows if scale is None or len(scale) != len(rows) else rows * np.abs(scale)[:, None]


def magnitude(group: ChannelGroup, order: int) -> np.ndarray:
    return _normalized([np.linalg.norm(_rows(s), ord=order, axis=1) for s in group.sources])


def bn_scale(group: ChannelGroup) -> tuple[np.ndarray, int]:
    """|gamma| per channel, and how many producers had no BatchNormalization (l1 used)."""
    scores, missing = [], 0
    for src in group.sources:
        bn = next((u.node for u in src.node.outputs[0].uses()
                   if u.node.op_type == "BatchNormalization" and u.idx == 0), None)
        gamma = const_array(bn.inputs[1]) if bn is not None else None
        if gamma is None:
            missing += 1
            scores.append(np.linalg.norm(_rows(src), ord=1, axis=1))
        else:
            scores.append(np.abs(gamma.astype(np.float64)))
    return _normalized(scores), missing


def apoz(model: onnx.ModelProto, analysis: GraphAnalysis, groups: list[ChannelGroup],
         data: dict[str, np.ndarray], max_samples: int, seed: int) -> dict[int, np.ndarray]:
    """1 - APoZ per channel of each group (mean |activation| where no ReLU follows)."""
    watch: dict[int, list[tuple[str, np.ndarray, bool]]] = {}
    for group in groups:
        acts = []
        for node in analysis.graph:
            if node.op_type not in ZERO_ACTIVATIONS or not node.outputs or node.outputs[0].name not in analysis.info:
                continue
            name = node.outputs[0].name
            info = analysis.info[name]
            if any(analysis.root(s) == analysis.root(group.spaces[0]) for s, _ in info.segments):
                acts.append((name, analysis.channels_of(name, group), True))
        if not acts:
            acts = [(s.node.outputs[0].name, analysis.channels_of(s.node.outputs[0].name, group), False)
                    for s in group.sources]
        watch[group.id] = acts
    names = sorted({n for acts in watch.values() for n, _, _ in acts})
    if not names:
        return {}
    sums = {n: None for n in names}
    counts = {n: 0 for n in names}
    probe = Probe(model, names)
    for out in probe.chunks(subsample(data, max_samples, seed)):
        for name in names:
            if name not in out:  # the values come in groups when they do not all fit at once
                continue
            info = analysis.info[name]
            arr = np.moveaxis(out[name], info.axis, 0)
            arr = arr.reshape(info.channels, -1)
            zeros = np.sum(arr <= 0, axis=1, dtype=np.float64)
            mags = np.sum(np.abs(arr), axis=1, dtype=np.float64)
            stat = np.stack([zeros, mags])
            sums[name] = stat if sums[name] is None else sums[name] + stat
            counts[name] += arr.shape[1]
    result = {}
    for gid, acts in watch.items():
        scores = []
        for name, chans, is_relu in acts:
            zeros, mags = sums[name][0][chans] / counts[name], sums[name][1][chans] / counts[name]
            scores.append(1.0 - zeros + 1e-6 * mags / (np.mean(mags) + 1e-12) if is_relu else mags)
        result[gid] = _normalized(scores)
    return result


def _gram(consumer, x: np.ndarray, chans: np.ndarray, inner: int, rng, rows: int | None = None) -> np.ndarray | None:
    """Gram matrix of what each group channel adds to the consumer's outputs, over sampled positions.

    Channel c adds z_c = sum_k W[o, c, k] * P[m, c, k] at output (position m, channel o); ThiNet needs
    G[c, d] = sum_{m, o} z_c z_d = sum_{k, l} (P^T P)[(c,k), (d,l)] * (W^T W)[(c,k), (d,l)], two matmuls.
    """
    w = const_array(consumer.weight).astype(np.float64)
    if consumer.kind == "conv":
        if x.ndim != 4 or w.ndim != 4:
            return None
        geom = conv_geometry(consumer.node, x.shape[2:], w.shape[2:])
        if geom is None:
            return None
        rows = rows or int(min(4096, max(512, 2 * len(chans) * int(np.prod(w.shape[2:])))))
        where = sample_positions(x.shape[0], geom.out_hw, rows, rng)
        p = patches(x, geom, where)[:, chans].astype(np.float64)  # [m, L, kk]
        wg = w[:, chans].reshape(w.shape[0], len(chans), -1)  # [O, L, kk]
        kk = p.shape[2]
        pf, wf = p.reshape(len(p), -1), wg.reshape(len(wg), -1)
    else:
        mat = w if consumer.in_axis == 0 else w.T  # [K, O]
        flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
        rows = rows or 4096
        if len(flat) > rows:
            flat = flat[np.sort(rng.choice(len(flat), size=rows, replace=False))]
        idx = (chans[:, None] * inner + np.arange(inner)[None, :]).reshape(-1)
        kk = inner
        pf, wf = flat[:, idx], mat[idx].T  # [n, L*inner], [O, L*inner]
    n = len(chans)
    return ((pf.T @ pf) * (wf.T @ wf)).reshape(n, kk, n, kk).sum(axis=(1, 3))


def greedy_order(gram: np.ndarray) -> np.ndarray:
    """ThiNet's greedy removal on the Gram matrix of channel contributions; returns scores (removal step)."""
    n = len(gram)
    removed = np.zeros(n, dtype=bool)
    acc = np.zeros(n)
    scores = np.zeros(n)
    diag = np.diag(gram).copy()
    for step in range(n):
        cost = np.where(removed, np.inf, acc + diag)
        c = int(np.argmin(cost))
        removed[c] = True
        scores[c] = step
        acc += 2.0 * gram[c]
    return scores


def thinet(model: onnx.ModelProto, analysis: GraphAnalysis, groups: list[ChannelGroup],
           data: dict[str, np.ndarray], max_samples: int, seed: int) -> dict[int, np.ndarray]:
    """Greedy ThiNet order per group from its consumers' outputs (groups without a consumer are left out)."""
    rng = np.random.default_rng(seed)
    names = sorted({c.value.name for g in groups for c in g.consumers})
    if not names:
        return {}
    sample = subsample(data, max_samples, seed)
    grams: dict[int, np.ndarray] = {}
    probe = Probe(model, names)
    per_consumer: dict[tuple[int, int], np.ndarray] = {}
    for out in probe.chunks(sample):
        for group in groups:
            for i, con in enumerate(group.consumers):
                if con.value.name not in out:  # in another group of values (they did not all fit at once)
                    continue
                chans = analysis.channels_of(con.value.name, group)
                info = analysis.info[con.value.name]
                g = _gram(con, out[con.value.name], chans, info.inner, rng)
                if g is not None:
                    key = (group.id, i)
                    per_consumer[key] = per_consumer.get(key, 0) + g
    for (gid, _), g in per_consumer.items():  # every consumer weighs the same, whatever its output scale
        grams[gid] = grams.get(gid, 0) + g / max(float(np.trace(g)), 1e-12)
    return {gid: greedy_order(g) for gid, g in grams.items()}


def channel_scores(model: onnx.ModelProto, analysis: GraphAnalysis, groups: list[ChannelGroup], criterion: str,
                   data: dict[str, np.ndarray] | None, max_samples: int = 256, seed: int = 0):
    """Scores per group id, and a note per group that fell back to another criterion."""
    fallbacks: dict[int, str] = {}
    scores: dict[int, np.ndarray] = {}
    if criterion in ("apoz", "thinet"):
        fn = apoz if criterion == "apoz" else thinet
        scores = fn(model, analysis, groups, data, max_samples, seed)
    for group in groups:
        if group.id in scores:
            continue
        if criterion == "l2":
            scores[group.id] = magnitude(group, 2)
        elif criterion == "bn_scale":
            scores[group.id], missing = bn_scale(group)
            if missing:
                fallbacks[group.id] = (f"{missing} of {len(group.sources)} producers have no "
                                       "BatchNormalization after them: l1 used for those")
        else:
            scores[group.id] = magnitude(group, 1)
            if criterion != "l1":
                fallbacks[group.id] = f"{criterion}: no consumer layer to measure ({node_label(group.sources[0].node)}); l1 used"
    return scores, fallbacks


def keep_indices(scores: np.ndarray, keep: int) -> np.ndarray:
    """The `keep` highest-scoring channels, in index order (ties: lower index first, deterministic)."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores)))
    return np.sort(order[:keep])
