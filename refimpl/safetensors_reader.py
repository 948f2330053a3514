"""A validating, memory-mapping reader of the safetensors format (never unpickles anything).

Layout: 8-byte little-endian header length N, N bytes of JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, then the raw little-endian data.
Tensors are returned as read-only views of one ``np.memmap`` per file, so no weight is copied
unless its stored dtype differs from the compute dtype.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .errors import CheckpointError

# stored dtype name -> numpy dtype of the raw bytes (BF16 is read as uint16 and decoded below)
RAW_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
MAX_HEADER_BYTES = 100 * 1024 * 1024


def bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 is the top 16 bits of a float32: shift the uint16 pattern left by 16 and reinterpret."""
    return (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)


class SafetensorsFile:
    """One ``.safetensors`` file: validated header, tensors as memory-mapped views."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as fh:
                head = fh.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: file of {size} bytes is too short to be safetensors")
                n = int.from_bytes(head, "little")
                if n > min(size - 8, MAX_HEADER_BYTES):
                    raise CheckpointError(
                        f"{self.path}: header length {n} exceeds the file size {size}: truncated or not safetensors"
                    )
                header_bytes = fh.read(n)
        except OSError as exc:
            raise CheckpointError(f"cannot read {self.path}: {exc}") from None
        try:
            header = json.loads(header_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{self.path}: corrupt safetensors header ({exc})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: safetensors header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._data_len = size - self._data_start
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, spec in header.items():
            self.entries[name] = self._validate(name, spec)
        self._buffer: np.ndarray | None = None

    def _validate(self, name: str, spec: object) -> tuple[str, tuple[int, ...], int, int]:
        try:
            dtype, shape, (begin, end) = spec["dtype"], tuple(spec["shape"]), spec["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{self.path}: malformed header entry for {name!r}: {spec!r}") from None
        if dtype not in RAW_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if not all(isinstance(s, int) and s >= 0 for s in shape):
            raise CheckpointError(f"{self.path}: tensor {name!r} has invalid shape {list(shape)}")
        nbytes = math.prod(shape) * RAW_DTYPES[dtype].itemsize
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise CheckpointError(f"{self.path}: tensor {name!r} has invalid data_offsets {[begin, end]}")
        if end - begin != nbytes:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} spans {end - begin} bytes but {dtype}{list(shape)} needs {nbytes}"
            )
        if end > self._data_len:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} ends at byte {end} of a {self._data_len}-byte data section: "
                "the file is truncated"
            )
        return dtype, shape, begin, end

    def keys(self) -> list[str]:
        return list(self.entries)

    def _data(self) -> np.ndarray:
        if self._buffer is None:
            if self._data_len == 0:
                self._buffer = np.empty(0, np.uint8)
            else:
                self._buffer = np.memmap(self.path, np.uint8, "r", self._data_start, (self._data_len,))
        return self._buffer

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of ``name`` as a read-only view (BF16 as uint16)."""
        dtype, shape, begin, end = self.entries[name]
        return self._data()[begin:end].view(RAW_DTYPES[dtype]).reshape(shape)

    def tensor(self, name: str, dtype: np.dtype) -> np.ndarray:
        """``name`` in the floating compute ``dtype``: a zero-copy view when the stored dtype matches."""
        stored = self.entries[name][0]
        if stored not in FLOAT_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name!r} is {stored}, not a floating-point parameter")
        raw = self.raw(name)
        value = bfloat16_to_float32(raw) if stored == "BF16" else raw
        if value.dtype != dtype:
            value = value.astype(dtype)
            value.flags.writeable = False
        return value
