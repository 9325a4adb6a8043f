"""Seed figures on the builder's ImageNet models (slow: builds MobileNetV2 and ResNet-50, ~15 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeopt.devices import DEVICE_DIR, load_device
from edgeopt.graph.io import load_model
from edgeopt.profile import profile_model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def zoo_models():
    """The builder models: from build/models when built there, else built in memory."""
    zoo = pytest.importorskip("edgeopt.zoo")
    built = {}
    for name in ("mobilenetv2-1.0-224", "resnet50"):
        path = ROOT / "build" / "models" / f"{name}.onnx"
        built[name] = load_model(path) if path.exists() else zoo.BUILDERS[name]()
    return built


def test_macs_match_the_seed(zoo_models):
    mobilenet = profile_model(zoo_models["mobilenetv2-1.0-224"], None).totals
    resnet = profile_model(zoo_models["resnet50"], None).totals
    assert 0.3e9 <= mobilenet["macs"] <= 0.6e9
    assert 3.9e9 <= resnet["macs"] <= 4.2e9
    assert resnet["params_count"] == 25_557_032  # torchvision's count (BN running stats are buffers)
    assert mobilenet["coverage"] == resnet["coverage"] == 1.0


def test_resnet50_weights_do_not_fit_myriadx(zoo_models):
    totals = profile_model(zoo_models["resnet50"], load_device("myriadx")).totals
    assert totals["weights_fit_onchip"] is False
    assert totals["device_weight_bytes"] > 20 * 2_490_368  # fp16 weights, ~51 MB


def test_depthwise_layers_memory_bound_on_rpi3(zoo_models):
    layers = profile_model(zoo_models["mobilenetv2-1.0-224"], load_device(str(DEVICE_DIR / "chips" / "rpi3.yaml"))).layers
    depthwise = [l for l in layers if l["op_class"] == "depthwise"]
    assert len(depthwise) == 17
    memory_bound = [l for l in depthwise if l["bound"] == "memory"]
    assert len(memory_bound) > len(depthwise) / 2
    # the large early ones spill the 512 KB L2; the late 7x7 ones fit and are compute-bound
    assert all(l["fits_onchip"] is False for l in memory_bound)


def test_mobilenet_is_lower_intensity_than_resnet(zoo_models):
    mobilenet = profile_model(zoo_models["mobilenetv2-1.0-224"], load_device("myriadx")).totals
    resnet = profile_model(zoo_models["resnet50"], load_device("myriadx")).totals
    assert mobilenet["ops_per_weight_byte"] < resnet["ops_per_weight_byte"]
    assert mobilenet["est_latency_ms"] < resnet["est_latency_ms"]
