"""4-bit packing in ONNX's order: two values per byte, the first in the low nibble.

ONNX INT4 / UINT4 tensors store element 2i in bits 0-3 and element 2i+1 in
bits 4-7 of byte i; an odd count leaves the last high nibble zero.
"""

from __future__ import annotations

import numpy as np


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Pack integers in [-8, 7] (int4) or [0, 15] (uint4) into a flat uint8 array of ceil(n/2) bytes."""
    flat = np.asarray(values).reshape(-1).astype(np.int16)
    if flat.size and (flat.min() < -8 or flat.max() > 15):
        raise ValueError("values do not fit in 4 bits")
    nib = (flat & 0x0F).astype(np.uint8)
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, count: int, signed: bool) -> np.ndarray:
    """The inverse of pack_int4: `count` values as int8 (signed, two's complement) or uint8."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    nib = np.empty(packed.size * 2, dtype=np.uint8)
    nib[0::2] = packed & 0x0F
    nib[1::2] = packed >> 4
    nib = nib[:count]
    if signed:
        return np.where(nib >= 8, nib.astype(np.int16) - 16, nib).astype(np.int8)
    return nib
