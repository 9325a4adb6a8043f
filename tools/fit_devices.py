"""Fit the built-in device profiles to the published measurements and write their YAML.

    .venv/bin/python tools/fit_devices.py [--only NAME,...] [--models build/device_truth/onnx]

Each profile below is one device + runtime + precision (+ threads) over its chip file
(edgeopt/devices/chips/): the chip gives the data-sheet figures, the runtime what it fuses and how
memory behaves, and the fit (edgeopt.devices.fitting, the same code as `edgeopt calibrate DEVICE
--measurements`) moves the free figures to the rows of bench/device_truth/published.csv that name
that profile's device, runtime, precision and threads. Every fitted figure keeps its prior; the
validation block holds the leave-one-architecture-out error. The models are the exported
architectures (`make device-exports`). A profile with no usable row is written unfitted and says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeopt.devices.fitting import TermCache, fit_group, shared_figures  # noqa: E402
from edgeopt.devices.loader import DEVICE_DIR, parse_device, _with_base  # noqa: E402
from edgeopt.devices.measurements import TRUTH_CSV, matches, read_measurements, usable  # noqa: E402
from edgeopt.devices.validation import validate_group  # noqa: E402
from edgeopt.devices.writer import apply_fit, write_yaml  # noqa: E402

NCNN_FUSES = ["BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid"]
TRT_FUSES = ["BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Add"]
TFLITE_FUSES = ["BatchNormalization", "Relu", "Clip"]
OPENVINO_FUSES = ["BatchNormalization", "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "Add"]
TVM_FUSES = ["BatchNormalization", "Relu", "Clip", "Add"]
ORT_FUSES = ["BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Add"]
RUNTIME_FUSES = {"ncnn": NCNN_FUSES, "ncnn-vulkan": NCNN_FUSES, "tensorrt": TRT_FUSES, "tflite": TFLITE_FUSES,
                 "xnnpack": TFLITE_FUSES, "edgetpu": TFLITE_FUSES, "openvino": OPENVINO_FUSES,
                 "ncsdk": OPENVINO_FUSES, "tvm": TVM_FUSES, "onnxruntime": ORT_FUSES, "caffe": [],
                 "pytorch": ["BatchNormalization"], "opencv": ["BatchNormalization", "Relu", "Clip"],
                 "hiai": TFLITE_FUSES, "tensorflow": []}
# per-layer dispatch (µs) and per-invoke cost priors by runtime: orders of magnitude, the fit moves them
LAYER_US = {"ncnn": 10, "ncnn-vulkan": 40, "tensorrt": 15, "tflite": 10, "xnnpack": 5, "edgetpu": 10,
            "openvino": 50, "ncsdk": 80, "tvm": 10, "onnxruntime": 15, "caffe": 200, "pytorch": 60,
            "opencv": 30, "hiai": 20, "tensorflow": 100}
RUN_US = {"edgetpu": 1300, "openvino": 2000, "ncsdk": 3000, "tensorrt": 300, "ncnn-vulkan": 1000,
          "caffe": 2000, "pytorch": 1000}

# reduction depth at which a GEMM kernel keeps half its efficiency (profile/shapeclass.py): the prior;
# the fit moves it per runtime family. GPUs' tiles are wider (more set-up per reduction) than a CPU's.
DEPTH_HALF = {"gpu": 32}  # by chip kind; 16 elsewhere

USB3 = {"value": 0.3, "mark": "I", "source": "I: USB 3.0 payload rate a Coral / NCS reaches (~300 MB/s)"}


def spec(name, chip, device, runtime, precision, threads=None, **extra):
    return dict(name=name, chip=chip, device=device, runtime=runtime, precision=precision, threads=threads, **extra)


PROFILES = [
    spec("coral-usb-edgetpu-int8", "edgetpu", "coral-usb", "edgetpu", "int8", weight_cache="partial",
         activations_onchip=True, host_link=USB3, dram=USB3,
         title="Google Coral USB Accelerator, Edge TPU (edgetpu runtime, int8)"),
    spec("coral-devboard-edgetpu-int8", "edgetpu", "coral-devboard", "edgetpu", "int8", weight_cache="partial",
         activations_onchip=True,
         host_link={"value": 0.5, "mark": "I", "source": "I: PCIe Gen2 x1 on the Dev Board (~500 MB/s)"},
         dram={"value": 0.5, "mark": "I", "source": "I: parameters stream over PCIe Gen2 x1 (~500 MB/s)"},
         title="Google Coral Dev Board, Edge TPU (edgetpu runtime, int8)"),
    spec("coral-devboard-cpu-tflite-int8-4t", "imx8m", "coral-devboard-cpu", "tflite", "int8", 4),
    spec("jetson-nano-tensorrt-fp16", "jetson-nano", "jetson-nano", "tensorrt", "fp16"),
    spec("jetson-nano-tensorrt-fp32", "jetson-nano", "jetson-nano", "tensorrt", "fp32"),
    spec("jetson-nano-ncnn-vulkan-fp16", "jetson-nano", "jetson-nano", "ncnn-vulkan", "fp16"),
    spec("jetson-nano-pytorch-fp16", "jetson-nano", "jetson-nano", "pytorch", "fp16"),
    spec("jetson-nano-cpu-ncnn-fp16-1t", "jetson-nano-cpu", "jetson-nano-cpu", "ncnn", "fp16", 1),
    spec("jetson-nano-cpu-ncnn-fp16-4t", "jetson-nano-cpu", "jetson-nano-cpu", "ncnn", "fp16", 4),
    spec("jetson-nano-cpu-ncnn-int8-1t", "jetson-nano-cpu", "jetson-nano-cpu", "ncnn", "int8", 1),
    spec("jetson-nano-cpu-ncnn-int8-4t", "jetson-nano-cpu", "jetson-nano-cpu", "ncnn", "int8", 4),
    spec("jetson-xavier-tensorrt-int8", "jetson-xavier", "jetson-xavier", "tensorrt", "int8"),
    spec("jetson-xavier-tensorrt-fp16", "jetson-xavier", "jetson-xavier", "tensorrt", "fp16"),
    spec("jetson-xavier-tensorrt-fp32", "jetson-xavier", "jetson-xavier", "tensorrt", "fp32"),
    spec("jetson-xavier-ncnn-vulkan-fp16", "jetson-xavier", "jetson-xavier", "ncnn-vulkan", "fp16"),
    spec("jetson-xavier-cpu-ncnn-fp16-4t", "jetson-xavier-cpu", "jetson-xavier-cpu", "ncnn", "fp16", 4),
    spec("kirin970-cpu-ncnn-fp16-1t", "kirin970-cpu", "kirin970-cpu", "ncnn", "fp16", 1),
    spec("kirin970-cpu-ncnn-fp16-4t", "kirin970-cpu", "kirin970-cpu", "ncnn", "fp16", 4),
    spec("kirin970-cpu-ncnn-int8-4t", "kirin970-cpu", "kirin970-cpu", "ncnn", "int8", 4),
    spec("kirin970-cpu-tvm-fp32-4t", "kirin970-cpu", "kirin970-cpu", "tvm", "fp32", 4),
    spec("kirin970-gpu-ncnn-vulkan-fp16", "kirin970-gpu", "kirin970-gpu", "ncnn-vulkan", "fp16"),
    spec("kirin970-npu-hiai-fp16", "kirin970-npu", "kirin970-npu", "hiai", "fp16"),
    spec("mali-t628-caffe-fp32", "mali-t628", "mali-t628", "caffe", "fp32",
         notes="Caffe + OpenCL on the Mali-T628; the published rows are per-image times at the best batch size"),
    spec("myriad2-openvino-fp16", "myriad2", "myriad2", "openvino", "fp16", host_link=USB3,
         title="Intel Movidius Myriad 2 (Neural Compute Stick 1), OpenVINO MYRIAD plugin, fp16"),
    spec("myriad2-ncsdk-fp16", "myriad2", "myriad2", "ncsdk", "fp16", host_link=USB3),
    spec("myriadx-openvino-fp16", "myriadx", "myriadx", "openvino", "fp16", host_link=USB3,
         title="Intel Movidius Myriad X (Neural Compute Stick 2), OpenVINO MYRIAD plugin, fp16"),
    spec("rpi3-ncnn-fp32-1t", "rpi3", "rpi3", "ncnn", "fp32", 1),
    spec("rpi3-ncnn-fp32-4t", "rpi3", "rpi3", "ncnn", "fp32", 4),
    spec("rpi3-ncnn-fp16-4t", "rpi3", "rpi3", "ncnn", "fp16", 4),
    spec("rpi3-ncnn-int8-1t", "rpi3", "rpi3", "ncnn", "int8", 1),
    spec("rpi3-ncnn-int8-4t", "rpi3", "rpi3", "ncnn", "int8", 4),
    spec("rpi3-tvm-fp32-4t", "rpi3", "rpi3", "tvm", "fp32", 4),
    spec("rpi3-xnnpack-fp32-4t", "rpi3", "rpi3", "xnnpack", "fp32", 4),
    spec("rpi3-xnnpack-int8-4t", "rpi3", "rpi3", "xnnpack", "int8", 4),
    spec("rpi3-tflite-fp32-1t", "rpi3", "rpi3", "tflite", "fp32", 1),
    spec("rpi3-tflite-fp32-4t", "rpi3", "rpi3", "tflite", "fp32", 4),
    spec("rpi4-ncnn-fp16-1t", "rpi4", "rpi4", "ncnn", "fp16", 1),
    spec("rpi4-ncnn-fp16-4t", "rpi4", "rpi4", "ncnn", "fp16", 4),
    spec("rpi4-ncnn-int8-1t", "rpi4", "rpi4", "ncnn", "int8", 1),
    spec("rpi4-ncnn-int8-4t", "rpi4", "rpi4", "ncnn", "int8", 4),
    spec("rpi4-xnnpack-fp32-4t", "rpi4", "rpi4", "xnnpack", "fp32", 4),
    spec("rpi4-xnnpack-int8-4t", "rpi4", "rpi4", "xnnpack", "int8", 4),
    spec("rpi4-tflite-fp32-1t", "rpi4", "rpi4", "tflite", "fp32", 1),
    spec("rpi4-tflite-fp32-4t", "rpi4", "rpi4", "tflite", "fp32", 4),
    spec("rpi4-tflite-int8-4t", "rpi4", "rpi4", "tflite", "int8", 4),
    spec("rpi4-onnxruntime-fp32-1t", "rpi4", "rpi4", "onnxruntime", "fp32", 1),
    spec("rpi4-onnxruntime-fp32-4t", "rpi4", "rpi4", "onnxruntime", "fp32", 4),
    spec("rpi4-pytorch-fp32-4t", "rpi4", "rpi4", "pytorch", "fp32", 4),
    spec("rpi4-opencv-fp32-4t", "rpi4", "rpi4", "opencv", "fp32", 4),
    spec("rpi4-oc-tflite-int8-4t", "rpi4", "rpi4-oc", "tflite", "int8", 4,
         peak_scale=1950 / 1500, title="Raspberry Pi 4 overclocked to 1950 MHz, TFLite int8, 4 threads"),
    spec("snapdragon820-ncnn-fp16-1t", "snapdragon820", "snapdragon820", "ncnn", "fp16", 1),
    spec("snapdragon820-ncnn-fp16-4t", "snapdragon820", "snapdragon820", "ncnn", "fp16", 4),
]
def runtime_family(s: dict) -> str:
    """Profiles whose runtime runs the same kernels: they share class-efficiency ratios in the fit."""
    runtime = s["runtime"]
    if runtime == "xnnpack":  # TFLite's XNNPACK delegate: XNNPACK's own kernels, not TFLite's built-in ones
        return "xnnpack"
    if runtime in ("openvino", "ncsdk"):
        return "movidius"
    if runtime in ("pytorch", "opencv", "onnxruntime", "tensorflow"):  # CPU and GPU builds share no kernels
        chip = yaml.safe_load((DEVICE_DIR / "chips" / f"{s['chip']}.yaml").read_text())
        return f"{runtime}-{chip.get('kind', 'cpu')}"
    return runtime


PRECISION_FROM_FP32 = {"fp16": 1.0, "int8": 2.0, "fp32": 1.0}  # an ARMv8.0 core without that arithmetic


def variant_data(s: dict) -> dict:
    """The variant's own keys over its chip file, before any fit."""
    chip_path = DEVICE_DIR / "chips" / f"{s['chip']}.yaml"
    chip = yaml.safe_load(chip_path.read_text())
    p = s["precision"]
    cores = (chip.get("cores") or {}).get("value") or (1 if s["chip"] == "snapdragon820" else 4)
    peak_fig = dict(chip["peak_gops"].get(p) or {})
    if peak_fig.get("value") is None:
        fp32 = chip["peak_gops"]["fp32"]["value"]
        peak_fig = {"value": round(fp32 * PRECISION_FROM_FP32[p], 3), "mark": "I",
                    "source": f"I: {s['runtime']} {p} on a core without {p} arithmetic: fp32 peak x {PRECISION_FROM_FP32[p]:g}"}
    scale = s.get("peak_scale", 1.0)
    if s["threads"] is not None and chip.get("kind") == "cpu":
        scale *= s["threads"] / cores
    if scale != 1.0:
        peak_fig = {"value": round(peak_fig["value"] * scale, 3), "mark": "I",
                    "source": f"{peak_fig.get('source', '')}; x {scale:.3g} for {s['threads']} of {cores} cores"
                    + (" at the overclock" if "peak_scale" in s else "")}
    threads_text = f", {s['threads']} thread{'s' if s['threads'] != 1 else ''}" if s["threads"] else ""
    data = {
        "name": s["name"], "base": f"chips/{s['chip']}.yaml",
        "title": s.get("title") or f"{chip['title']}: {s['runtime']} {p}{threads_text}",
        "device": s["device"], "runtime": s["runtime"], "threads": s["threads"],
        "precisions": [p], "default_precision": p, "peak_gops": {p: peak_fig},
        "fuses": RUNTIME_FUSES.get(s["runtime"], TFLITE_FUSES),
        "layer_overhead_us": {"value": LAYER_US.get(s["runtime"], 20), "mark": "I",
                              "source": f"I: order of a {s['runtime']} layer dispatch; the fit moves it"},
        "run_overhead_us": {"value": RUN_US.get(s["runtime"], 100), "mark": "I",
                            "source": f"I: order of a {s['runtime']} invoke; the fit moves it"},
        "depth_half": {"value": DEPTH_HALF.get(chip.get("kind"), 16), "mark": "I",
                       "source": "I: tile set-up and write-back once per reduction (a few to tens of MACs); the fit moves it"},
    }
    if p not in ("fp32",) and chip.get("alignment"):
        lanes = {"fp16": 8, "int8": 16}.get(p)
        if chip["kind"] == "cpu" and lanes and p not in chip["alignment"]:
            data["alignment"] = {p: lanes}
    for key in ("weight_cache", "activations_onchip", "notes"):
        if key in s:
            data[key] = s[key]
    if "host_link" in s:
        data["host_link_gbps"] = s["host_link"]
    if "dram" in s:
        data["dram_gbps"] = s["dram"]
    elif chip.get("kind") in SUSTAINED_DRAM and (chip.get("dram_gbps") or {}).get("mark") == "P":
        peak_bw, share = chip["dram_gbps"]["value"], SUSTAINED_DRAM[chip["kind"]]
        data["dram_gbps"] = {"value": round(peak_bw * share, 3), "mark": "I",
                             "source": f"I: {share:.0%} of the data-sheet {peak_bw:g} GB/s ({chip['dram_gbps'].get('source', '')}): "
                                       "what a kernel streams, not the interface peak; the fit moves it"}
    return data


# the share of the data-sheet DRAM peak that kernels sustain, by chip kind: the prior of the fitted
# bandwidth. A Raspberry Pi 4 streams 5.5 of its 12.8 GB/s (STREAM, sci-pi.org.uk: 43 %); GPUs' wide
# memory controllers keep more requests in flight
SUSTAINED_DRAM = {"cpu": 0.45, "gpu": 0.7}

RICH_ARCHS = 5  # a family whose rows cover this many architectures fits its shared figures on its own


def chip_kind(s: dict) -> str:
    """cpu or accelerator: whose well-measured runtimes lend their shared figures to a family with few rows."""
    chip = yaml.safe_load((DEVICE_DIR / "chips" / f"{s['chip']}.yaml").read_text())
    return "cpu" if chip.get("kind") == "cpu" else "accelerator"


class KindPriors:
    """The shared figures (class ratios to conv, depth_half) of the well-measured families, per chip kind;
    without one architecture, from the refits that never saw it (so a LOAO prediction stays honest)."""

    def __init__(self):
        self.full: dict[str, list] = {}
        self.held: dict[str, list[tuple[set, list, dict]]] = {}

    def add(self, kind: str, results: list, fits: dict, archs: set):
        self.full.setdefault(kind, []).extend(results)
        self.held.setdefault(kind, []).append((archs, results, fits))

    def prior(self, kind: str, arch: str | None = None) -> dict | None:
        kinds = [kind] if kind in self.full else list(self.full)
        if arch is None:
            return shared_figures([r for k in kinds for r in self.full[k]]) or None
        results = [r for k in kinds for archs, full, fits in self.held[k]
                   for r in (fits.get(arch, full) if arch in archs else full)]
        return shared_figures(results) or None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated profile names (their families are fitted, the rest read)")
    ap.add_argument("--models", default=str(ROOT / "build" / "device_truth" / "onnx"))
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    rows = usable(read_measurements(TRUTH_CSV))
    cache = TermCache(args.models)
    groups: dict[str, list[dict]] = {}
    for s in PROFILES:
        groups.setdefault(runtime_family(s), []).append(s)
    families = []
    for family, specs in groups.items():
        members, datas, paths = [], [], []
        for s in specs:
            data = variant_data(s)
            path = DEVICE_DIR / f"{s['name']}.yaml"
            device = parse_device(_with_base(data, path), path)
            members.append((device, [r for r in rows if matches(device, r)]))
            datas.append(data)
            paths.append(path)
        archs = {r.key for _, mine in members for r in mine}
        families.append((family, specs, members, datas, paths, archs))
    # well-measured families first: what they learn is the prior of the others of their chip kind
    kinds = KindPriors()
    rich = [f for f in families if len(f[5]) >= RICH_ARCHS]
    poor = [f for f in families if len(f[5]) < RICH_ARCHS]
    for family, specs, members, datas, paths, archs in rich:
        fits: dict = {}
        results = fit_group(members, cache)
        checks = validate_group(members, cache, results, fits=fits)
        kinds.add(chip_kind(specs[0]), results, fits, archs)
        if not only or any(s["name"] in only for s in specs):
            _write(family, members, datas, paths, results, checks, "")
    for family, specs, members, datas, paths, archs in poor:
        kind = chip_kind(specs[0])
        results = fit_group(members, cache, shared_prior=kinds.prior(kind))
        checks = (validate_group(members, cache, results, shared_prior=lambda arch: kinds.prior(kind, arch))
                  if archs else [None] * len(members))
        note = f"; class ratios and depth_half start from the {kind} families with {RICH_ARCHS}+ architectures"
        if not only or any(s["name"] in only for s in specs):
            _write(family, members, datas, paths, results, checks, note)
    return 0


def _write(family, members, datas, paths, results, checks, note):
    for (device, mine), data, path, result, check in zip(members, datas, paths, results, checks):
        what = f"published rows (bench/device_truth/published.csv), fitted with the {family} group{note}"
        if mine:
            data = apply_fit(data, result, check, what)
            loao = check["loao"]
            print(f"{device.name:38s} rows {len(mine):3d}  in-sample within25 {result.stats['within_25']:.2f} "
                  f"| LOAO within25 {loao.get('within_25', float('nan')):.2f} "
                  f"median {loao.get('median_error', float('nan')):.2f} tau {loao.get('kendall_tau')}", flush=True)
        else:  # no rows of its own: the group's shared figures on its own conv figure
            result.free = [k for k in result.free
                           if (k.startswith("efficiency.") and k != "efficiency.conv") or k == "depth_half"]
            data = apply_fit(data, result, None, f"the {family} group's class ratios (no rows of its own){note}")
            data["fit"].pop("rows", None)
            data["validation"] = {"rows": 0, "note": "no published classification row: unvalidated"}
            print(f"{device.name:38s} rows   0  unvalidated", flush=True)
        write_yaml(data, path)


if __name__ == "__main__":
    sys.exit(main())
