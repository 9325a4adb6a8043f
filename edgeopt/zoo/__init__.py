"""Full-size ImageNet networks with random weights and realistic BatchNorm statistics.

Built on demand with onnx.helper and numpy only (no torch), for benchmarks and
slow tests of the graph passes. Build one in Python, or write them all with
`python -m edgeopt.zoo --out build/models`:

    from edgeopt.zoo import build_resnet50, ensure_model
    model = build_resnet50()                    # onnx.ModelProto, ~5-10 s
    path = ensure_model("mobilenetv2-1.0-224")  # build/models/mobilenetv2-1.0-224.onnx

Every model: input `input` [N, 3, H, W] float32 (N symbolic), output `logits`
[N, classes], weights as initializers, BN unfolded, default opset 13.
"""

from edgeopt.zoo.mobilenet_v2 import build_mobilenet_v2
from edgeopt.zoo.resnet import build_resnet18, build_resnet50
from edgeopt.zoo.store import ensure_model, model_path, save_model_atomic
from edgeopt.zoo.variants import fix_batch, to_opset, weights_as_constants

# file stem -> builder (called with its defaults)
BUILDERS = {
    "mobilenetv2-1.0-224": build_mobilenet_v2,
    "resnet50": build_resnet50,
    "resnet18": build_resnet18,
}

__all__ = [
    "BUILDERS",
    "build_mobilenet_v2",
    "build_resnet18",
    "build_resnet50",
    "ensure_model",
    "fix_batch",
    "model_path",
    "save_model_atomic",
    "to_opset",
    "weights_as_constants",
]
