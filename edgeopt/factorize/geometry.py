"""A 2-D Conv's geometry (kernel, strides, padding, dilation) and what follows from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # ONNX order: top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)
    auto_pad: str = "NOTSET"

    def resolved_pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Explicit pads for an input of this size (auto_pad SAME_* / VALID resolved as ONNX does)."""
        if self.auto_pad in ("NOTSET", ""):
            return self.pads
        if self.auto_pad == "VALID":
            return (0, 0, 0, 0)
        begin, end = [], []
        for size, k, s, d in zip((height, width), self.kernel, self.strides, self.dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            if self.auto_pad == "SAME_UPPER":
                begin.append(small), end.append(large)
            else:  # SAME_LOWER
                begin.append(large), end.append(small)
        return (begin[0], begin[1], end[0], end[1])

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        top, left, bottom, right = self.resolved_pads(height, width)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        return ((height + top + bottom - dh * (kh - 1) - 1) // sh + 1,
                (width + left + right - dw * (kw - 1) - 1) // sw + 1)

    @classmethod
    def from_attributes(cls, kernel: tuple[int, int], attrs: dict) -> ConvGeometry:
        """From a Conv's attribute values (absent ones take the ONNX defaults)."""
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if isinstance(auto_pad, bytes):
            auto_pad = auto_pad.decode()
        return cls(kernel=tuple(kernel),
                   strides=tuple(attrs.get("strides") or (1, 1)),
                   pads=tuple(attrs.get("pads") or (0, 0, 0, 0)),
                   dilations=tuple(attrs.get("dilations") or (1, 1)),
                   auto_pad=auto_pad or "NOTSET")
