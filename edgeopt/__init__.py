"""edgeopt: make ONNX models smaller and faster for edge devices, and know what they cost there."""

__version__ = "0.1.0"
