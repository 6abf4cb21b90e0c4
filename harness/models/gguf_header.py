"""Where a GGUF file's tensor data must end, read from its header alone: how a truncated or corrupt file is told
apart, in well under a second, before a conversion that takes minutes.

The header is parsed here (the GGUF format: magic, version, counts, key-value metadata, then one record per
tensor: name, dimensions, ggml type, offset) with the block sizes of every quantisation type from the `gguf`
package's constants. transformers' own fast header reader was tried first and refuses quantisation types it
cannot dequantise itself (Gemma-3-270M's Q5_0 tensors), though its loader converts them through `gguf`; this
parser reads the layout of every type the `gguf` package knows. `gguf.GGUFReader` reads it too, but builds
arrays for every field and tensor: 17 s on Gemma-3-270M's 241 MB file here, against well under one.

Raises EOFError where the file ends inside its header, ValueError where it is not GGUF (magic, version, a value
type or quantisation type no GGUF file has).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
# GGUF metadata value types: fixed-size ones by their struct format; 8 is a string, 9 an array
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Reader:
    """Little-endian reads that never run past the file's end (EOFError instead)."""

    def __init__(self, handle: BinaryIO, size: int):
        self.handle, self.size = handle, size

    def take(self, count: int) -> bytes:
        self._check(count)
        return self.handle.read(count)

    def skip(self, count: int) -> None:
        self._check(count)
        self.handle.seek(count, 1)

    def _check(self, count: int) -> None:
        position = self.handle.tell()
        if count < 0 or position + count > self.size:
            raise EOFError(f"the header needs {count} bytes at byte {position}, but the file ends at {self.size}")

    def unpack(self, form: str) -> object:
        return struct.unpack("<" + form, self.take(struct.calcsize(form)))[0]

    def string(self) -> str:
        return self.take(self.unpack("Q")).decode("utf-8")

    def value(self, kind: int) -> object:
        """One metadata value (arrays skipped: only the alignment, a scalar, is needed)."""
        if kind in _FIXED:
            return self.unpack(_FIXED[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            element, count = self.unpack("I"), self.unpack("Q")
            if element in _FIXED:
                self.skip(count * struct.calcsize(_FIXED[element]))
            else:
                for _ in range(count):
                    self.value(element)
            return None
        raise ValueError(f"metadata value type {kind} at byte {self.handle.tell() - 4} is not a GGUF value type")


def tensor_data_end(path: Path) -> int:
    """The byte at which the last tensor of the GGUF file `path` ends (its data start, aligned, plus the largest
    offset + size in its tensor table)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    size = path.stat().st_size
    with path.open("rb") as handle:
        read = _Reader(handle, size)
        magic = handle.read(4)
        if magic != MAGIC:
            raise ValueError(f"it starts with {magic!r}, not the GGUF magic {MAGIC!r}")
        version = read.unpack("I")
        if version not in VERSIONS:
            raise ValueError(f"GGUF version {version} (known: {', '.join(map(str, VERSIONS))})")
        tensors, entries = read.unpack("Q"), read.unpack("Q")
        alignment = DEFAULT_ALIGNMENT
        for _ in range(entries):
            key, value = read.string(), read.value(read.unpack("I"))
            if key == ALIGNMENT_KEY:
                alignment = int(value)
        ends = []
        for _ in range(tensors):
            name = read.string()
            shape = [read.unpack("Q") for _ in range(read.unpack("I"))]
            kind, offset = read.unpack("I"), read.unpack("Q")
            try:
                block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise ValueError(f"tensor {name!r} has ggml type {kind}, which no GGUF file uses") from None
            ends.append(offset + math.prod(shape) // block * block_bytes)
        data_start = -(-handle.tell() // alignment) * alignment
    return data_start + max(ends, default=0)
