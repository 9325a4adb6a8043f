"""Intermediate activations on real data, in bounded memory.

Data-driven passes (static calibration, bias correction, quantization sensitivity,
APoZ / ThiNet, reconstruction, input-weighted factorization) expose values of the
model as extra outputs and run onnxruntime on the calibration data. Holding every
value of every sample at once is what grew quantize_static on PP-OCRv4 det at
640x640 past 24 GB; here every run is bounded:

- the shape layer gives each value's bytes per sample (`footprint`);
- one run's working set is bounded above by the sum of every value the model
  computes (all onnxruntime could hold at once, whatever its memory plan);
- a run takes as many samples as fit in ACTIVATION_BUDGET together with the
  values it exposes (at least one sample, or the model's fixed batch), and the
  values are exposed in groups that fit (`Stream`);
- the plan depends only on the model, the data's shapes and ACTIVATION_BUDGET,
  never on the machine's free memory, so the results are the same everywhere;
- when even the smallest run cannot fit in what this process may still take
  (MemAvailable, and RLIMIT_AS less what the process has mapped), OutOfMemory
  says so in one line (exit 2) before running, and an allocation failure during
  a run becomes the same error instead of a traceback or a kernel kill.

Consumers reduce what they need chunk by chunk (running min / max, histograms
with a fixed bin layout, sums); `collect_activations` still returns every sample
of a few values at once for callers that need them whole.
"""

from __future__ import annotations

import hashlib
import resource
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx
import onnxruntime as ort

from edgeopt.errors import OutOfMemory

ACTIVATION_BUDGET = 1 << 30  # bytes of intermediate tensors one run (and one assembled chunk) may hold
MAX_RUN = 64  # samples per onnxruntime run, however small the model
UNKNOWN_ELEM_BYTES = 4


def fmt_gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


@dataclass
class Footprint:
    """Bytes of a model's values per `unit` samples (the model's fixed batch, else one sample)."""

    unit: int
    fixed: bool  # the model takes exactly `unit` samples per run (its batch dim is fixed)
    sizes: dict[str, int]  # value name -> bytes for `unit` samples
    working: int  # bytes a run of `unit` samples may hold at most: every value the model computes
    fallback: int  # assumed for a value the shape layer could not size

    def size(self, name: str) -> int:
        return self.sizes.get(name, self.fallback)

    @property
    def largest(self) -> tuple[str, int]:
        if not self.sizes:
            return "", self.fallback
        name = max(self.sizes, key=lambda n: (self.sizes[n], n))
        return name, self.sizes[name]


_FOOTPRINTS: OrderedDict[str, Footprint] = OrderedDict()  # by model structure + input dims (no model kept alive)


def _structure_key(model: onnx.ModelProto, shapes: dict) -> str:
    digest = hashlib.sha1(repr(sorted(shapes.items())).encode())
    for t in model.graph.initializer:
        digest.update(f"{t.name}:{list(t.dims)}:{t.data_type};".encode())
    for n in model.graph.node:
        digest.update(f"{n.op_type}|{','.join(n.input)}|{','.join(n.output)};".encode())
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH or a.type == onnx.AttributeProto.GRAPHS:
                digest.update(str(id(a)).encode())  # subgraphs: no sharing (rare, and only the plan is at stake)
    for o in model.graph.output:
        digest.update(o.name.encode())
    return digest.hexdigest()


def _fixed_batch(model: onnx.ModelProto) -> int | None:
    from edgeopt.verify.runtime import static_batch

    return static_batch(model)


def footprint(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> Footprint:
    """Bytes per sample (or per fixed batch) of every value, from the shape layer on the data's shapes."""
    from edgeopt.graph.shapes import infer_value_shapes, resolve_input_shapes
    from edgeopt.graph.shapes.infer import node_outputs
    from edgeopt.verify.feeds import sample_count

    fixed = _fixed_batch(model)
    unit = fixed or 1
    samples = max(sample_count(feeds), 1)
    input_bytes = sum(int(np.asarray(v).nbytes) for v in feeds.values()) * unit // samples
    try:
        shapes = resolve_input_shapes(model, None, feeds)
    except Exception:  # noqa: BLE001 - a dim the data does not give: estimate from the inputs alone
        shapes = None
    key = f"{fixed}:" + _structure_key(model, shapes or {"": sorted((k, np.shape(v)) for k, v in feeds.items())})
    if key in _FOOTPRINTS:
        _FOOTPRINTS.move_to_end(key)
        return _FOOTPRINTS[key]
    sizes: dict[str, int] = {}
    if shapes is not None:
        try:
            values = infer_value_shapes(model, shapes, feeds)
        except Exception:  # noqa: BLE001 - shape inference failed: every value gets the fallback
            values = {}
        for name, (elem, dims) in values.items():
            if dims is None or any(d is None or d < 0 for d in dims):
                continue
            try:
                itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).itemsize if elem else UNKNOWN_ELEM_BYTES
            except Exception:  # noqa: BLE001 - string / undefined types
                itemsize = UNKNOWN_ELEM_BYTES
            sizes[name] = int(np.prod(dims, dtype=np.int64)) * itemsize
    produced = node_outputs(model.graph, recurse=False)
    known = [sizes[n] for n in produced if n in sizes]
    fallback = max(known + [input_bytes, 1])
    working = sum(sizes.get(n, fallback) for n in produced) + input_bytes
    fp = Footprint(unit=unit, fixed=fixed is not None, sizes=sizes, working=working, fallback=fallback)
    _FOOTPRINTS[key] = fp
    while len(_FOOTPRINTS) > 8:
        _FOOTPRINTS.popitem(last=False)
    return fp


def available_bytes() -> tuple[int | None, str]:
    """What this process may still allocate, and where the figure comes from: the smaller of
    MemAvailable (/proc/meminfo) and the address-space limit (RLIMIT_AS) less what is mapped."""
    found: list[tuple[int, str]] = []
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    found.append((int(line.split()[1]) * 1024, "available memory"))
                    break
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        mapped = 0
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("VmSize:"):
                        mapped = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
        found.append((max(soft - mapped, 0), f"the address-space limit of {fmt_gb(soft)}"))
    if not found:
        return None, ""
    return min(found)


def is_allocation_failure(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or any(s in text for s in (
        "Failed to allocate memory", "bad_alloc", "Unable to allocate", "out of memory"))


def out_of_memory(what: str, exc: BaseException | None = None, need: int | None = None) -> OutOfMemory:
    """The one line: what could not fit, the figures, what to do."""
    free, source = available_bytes()
    if need is not None:
        head = f"{what}: not enough memory: one run needs about {fmt_gb(need)}"
        if free is not None:
            head += f", {fmt_gb(free)} left ({source})"
    else:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        where = (f"under the address-space limit of {fmt_gb(soft)}" if soft != resource.RLIM_INFINITY
                 else f"{fmt_gb(free)} available" if free is not None else "")
        head = f"{what}: out of memory during a run" + (f" ({where})" if where else "")
    return OutOfMemory(head + "; use smaller inputs (input_shapes or the data's shape), fewer samples, "
                       "or a machine with more memory")


@dataclass
class Plan:
    """How a stream runs: values exposed in `groups`, `chunk` samples per yielded piece, `run` per session run."""

    groups: list[list[str]]
    chunk: int
    run: int
    need: int  # bytes the smallest run and one assembled piece hold: what must fit in free memory


def plan(fp: Footprint, names: list[str], chunk: int | None = None, budget: int | None = None,
         max_run: int = MAX_RUN) -> Plan:
    """Groups of `names` and sample counts, so that one piece (chunk samples of a group) and one run
    (its working set plus the group's values) each stay within the budget; chunk None: one run per piece."""
    budget = ACTIVATION_BUDGET if budget is None else budget
    unit = fp.unit
    half = max(budget // 2, 1)
    sizes = [fp.size(n) for n in names]
    biggest = max(sizes, default=0)
    if chunk is not None:
        chunk = max(unit, chunk - chunk % unit)
        if biggest and chunk // unit * biggest > half:  # one value of the piece alone exceeds the budget
            chunk = unit * max(1, half // biggest)
    per_piece = (chunk // unit) if chunk is not None else 1
    groups: list[list[str]] = []
    held = 0
    for name, size in zip(names, sizes):
        if groups and held + size * per_piece <= half:
            groups[-1].append(name)
            held += size * per_piece
        else:
            groups.append([name])
            held = size * per_piece
    exposed = max((sum(fp.size(n) for n in g) for g in groups), default=0)
    units = max(1, min(budget // max(fp.working + exposed, 1), max(max_run // unit, 1)))
    run = unit if fp.fixed else units * unit  # a fixed batch runs exactly that many
    if chunk is not None:
        run = min(run, chunk)
    else:
        chunk = run
    _, largest = fp.largest
    # the smallest run: the largest value with its input, the group's values; plus the assembled piece
    need = 2 * largest + exposed + (chunk // unit * exposed if chunk > run else 0)
    return Plan(groups or [[]], chunk, run, need)


def _session(model: onnx.ModelProto, outputs: list[str], optimized: bool) -> ort.InferenceSession:
    """A session computing only `outputs` (nodes after them are dropped), typed where the model says."""
    from edgeopt.graph.session import open_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    kept = {o.name: o for o in model.graph.output}
    del probe.graph.output[:]
    for name in outputs:
        if name in kept:
            probe.graph.output.add().CopyFrom(kept[name])
        else:
            probe.graph.output.add().name = name  # untyped: onnxruntime infers the type
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only, as verify.runtime.make_session (its arena too: without
    # one, every big tensor is a fresh mapping and calibrating PP-OCRv4 det at 640x640 takes 2.6x as long)
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return open_session(probe, options)


@dataclass
class Piece:
    start: int
    stop: int
    values: dict[str, np.ndarray]


class Stream:
    """The named values of a model on feeds, a group of values and a chunk of samples at a time.

    Iterating yields Pieces group by group (every chunk of the first group, then the next group), each
    holding `plan.chunk` samples (the last may be shorter; with a fixed batch an incomplete last batch is
    left out) of one group's values. Values that are graph inputs come from the feeds. `plan` may be given
    (two models streamed in step: the same groups and chunks); optimized False runs onnxruntime without
    graph optimizations (what its calibrators do)."""

    def __init__(self, model: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray], *,
                 chunk: int | None = None, what: str = "collecting activations", optimized: bool = True,
                 plan_: Plan | None = None, fp: Footprint | None = None, budget: int | None = None):
        self.model, self.feeds, self.what, self.optimized = model, feeds, what, optimized
        self.names = list(dict.fromkeys(names))
        self.fp = fp or footprint(model, feeds)
        self.plan = plan_ or plan(self.fp, self.names, chunk, budget)
        self.unit = self.fp.unit
        self.check()

    def check(self) -> None:
        free, _ = available_bytes()
        if free is not None and self.plan.need > free:
            raise out_of_memory(self.what, need=self.plan.need)

    def _run(self, session, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return session.run(names, feeds)
        except Exception as exc:  # onnxruntime raises its own types
            if is_allocation_failure(exc):
                raise out_of_memory(self.what, exc) from None
            raise

    def groups(self) -> Iterator[tuple[list[str], Iterator[Piece]]]:
        """(group, its pieces) in order: one session per group, dropped before the next is made."""
        for group in self.plan.groups:
            yield group, self._pieces(group)

    def _pieces(self, group: list[str]) -> Iterator[Piece]:
        from edgeopt.verify.feeds import concat_samples, sample_count, take

        inputs = {i.name for i in self.model.graph.input}
        computed = [n for n in group if n not in inputs]
        try:
            session = _session(self.model, computed, self.optimized) if computed else None
        except Exception as exc:
            if is_allocation_failure(exc):
                raise out_of_memory(self.what, exc) from None
            raise
        n = sample_count(self.feeds)
        fixed = self.fp.fixed
        chunk, run = self.plan.chunk, self.plan.run
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            if fixed and (stop - start) % self.unit:
                break
            parts, sizes = [], []
            for s in range(start, stop, run):
                e = min(s + run, stop)
                feeds = take(self.feeds, s, e)
                out = dict(zip(computed, self._run(session, computed, feeds))) if computed else {}
                out.update((k, np.asarray(feeds[k])) for k in group if k in inputs)
                parts.append(out)
                sizes.append(e - s)
            if len(parts) == 1:
                values = parts[0]
            else:
                values = {k: concat_samples([p[k] for p in parts], sizes) for k in group}
            del parts
            yield Piece(start, stop, values)
        del session

    def __iter__(self) -> Iterator[Piece]:
        for _, pieces in self.groups():
            yield from pieces


def run_chunk(model: onnx.ModelProto, feeds: dict[str, np.ndarray], what: str = "running the model") -> int:
    """Samples per onnxruntime run of the whole model (its outputs held too) within the budget, for
    verify.runtime.run_batched's chunk; OutOfMemory when one sample cannot fit."""
    stream = Stream(model, [o.name for o in model.graph.output], feeds, what=what)
    return stream.plan.run


def collect_activations(model: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray],
                        what: str = "collecting activations") -> dict[str, np.ndarray]:
    """Values of the named tensors when the model runs on feeds, every sample (batch first): only for a
    few values (the caller holds them whole); the runs stay bounded. Prefer Stream and reduce as it goes."""
    from edgeopt.verify.feeds import concat_samples

    names = list(dict.fromkeys(names))
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    sizes: dict[str, list[int]] = {n: [] for n in names}
    for piece in Stream(model, names, feeds, what=what):
        for k, v in piece.values.items():
            parts[k].append(v)
            sizes[k].append(piece.stop - piece.start)
    return {n: concat_samples(parts[n], sizes[n]) for n in names if parts[n]}
