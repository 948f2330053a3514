"""A validating, memory-mapping reader of the safetensors format (never unpickles anything).

Layout: 8-byte little-endian header length N, N bytes of JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, then the raw little-endian data.
Validation follows the reference reader (the ``safetensors`` Rust crate): the header starts with ``{``,
holds no duplicate keys, and the tensors' byte ranges, sorted, tile the data section exactly.
Tensors are returned as read-only views of one ``np.memmap`` per file (or of an in-memory copy with
``mmap=False``), so no weight is copied unless its stored dtype differs from the compute dtype.

Also the file-safety helpers of the checkpoint layer: ``open_regular`` (regular files inside the model
folder only, never a FIFO, device or directory) and ``strict_json`` (duplicate keys, deep nesting and
non-finite numbers become the caller's error type).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import IO, Any

import numpy as np

from refimpl.errors import CheckpointError, RefimplError

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
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the Rust crate's MAX_HEADER_SIZE
MAX_DIM = 2**63 - 1  # shapes are usize in the reference reader
FINITE_CHUNK = 1 << 20  # elements per np.isfinite call: bounds the temporary to 1 MB of booleans


def short(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def allowed_roots(folder: str | Path) -> list[str]:
    """Real paths a file of ``folder`` may resolve into: the folder, and for a Hugging Face cache
    snapshot (``models--X/snapshots/REV``) also the repo's ``blobs`` directory its symlinks point to."""
    real = os.path.realpath(folder)
    roots = [real]
    parent = os.path.dirname(real)
    if os.path.basename(parent) == "snapshots":
        roots.append(os.path.join(os.path.dirname(parent), "blobs"))
    return roots


def open_regular(path: str | Path, folder: str | Path | None = None, error: type[RefimplError] = CheckpointError,
                 what: str = "") -> IO[bytes]:
    """Open ``path`` for binary reading if it is a regular file (resolving inside ``folder`` when given).

    FIFOs, devices, sockets and directories are refused without blocking (opened ``O_NONBLOCK``, then
    ``fstat``); a symlink resolving outside the folder is refused before anything is read.
    """
    path = Path(path)
    label = what or str(path)
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError) as exc:
        raise error(f"cannot resolve {label}: {exc}") from None
    if folder is not None:
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in allowed_roots(folder)):
            raise error(f"{label} resolves outside the model folder {folder}; refusing to open it")
    # os.open makes the descriptor non-inheritable itself (PEP 446): no O_CLOEXEC needed
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise error(f"{label} does not exist") from None
    except (OSError, ValueError) as exc:
        raise error(f"cannot open {label}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
            raise error(f"{label} is {kind}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path, folder: str | Path | None, max_bytes: int,
                 error: type[RefimplError] = CheckpointError, what: str = "") -> bytes:
    """The bytes of a regular file (see ``open_regular``), refused when larger than ``max_bytes``."""
    label = what or str(path)
    with open_regular(path, folder, error, label) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise error(f"{label} is {size} bytes, more than the {max_bytes} this file type may hold")
        try:
            return fh.read(max_bytes + 1)[:max_bytes]
        except OSError as exc:
            raise error(f"cannot read {label}: {exc.strerror}") from None


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json(data: bytes | str, what: str, error: type[RefimplError] = CheckpointError,
                allow_constants: bool = False) -> Any:
    """Parse JSON; duplicate keys, invalid UTF-8, excessive nesting (and NaN/Infinity unless
    ``allow_constants``) raise ``error`` naming ``what``. The message never quotes the content."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        kwargs = {} if allow_constants else {"parse_constant": _no_constant}
        return json.loads(text, object_pairs_hook=_no_duplicates, **kwargs)
    except _DuplicateKey as exc:
        raise error(f"{what} holds the key {short(str(exc.args[0]), 80)} twice") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply to be a valid file") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # non-standard constants, integers too long to convert
        raise error(f"{what} is not valid JSON: {short(str(exc), 100)}") from None


def bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 is the top 16 bits of a float32: shift the uint16 pattern left by 16 and reinterpret."""
    return (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)


class SafetensorsFile:
    """One ``.safetensors`` file: validated header, tensors as memory-mapped views (or read into memory).

    ``folder``: when given, the file must resolve inside it. ``mmap=False`` reads the data section into
    memory once, so a file truncated later by another process cannot crash the reader (SIGBUS).
    """

    def __init__(self, path: str | Path, folder: str | Path | None = None, mmap: bool = True):
        self.path = Path(path)
        self.mmap = bool(mmap)
        self._buffer: np.ndarray | None = None
        with open_regular(self.path, folder) as fh:
            try:
                size = os.fstat(fh.fileno()).st_size
                head = fh.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: file of {size} bytes is too short to be safetensors")
                n = int.from_bytes(head, "little")
                if n == 0:
                    raise CheckpointError(f"{self.path}: header length is 0: not a safetensors file")
                if n > MAX_HEADER_BYTES:
                    raise CheckpointError(f"{self.path}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte "
                                          "limit of the format: corrupt or not safetensors")
                if n > size - 8:
                    raise CheckpointError(
                        f"{self.path}: header length {n} exceeds the file size {size}: truncated or not safetensors"
                    )
                header_bytes = fh.read(n)
                if len(header_bytes) != n:
                    raise CheckpointError(f"{self.path}: file shrank while being read: truncated")
                self._data_start = 8 + n
                self._data_len = size - self._data_start
                if not self.mmap:
                    data = fh.read(self._data_len)
                    if len(data) != self._data_len:
                        raise CheckpointError(f"{self.path}: file shrank while being read: truncated")
                    self._buffer = np.frombuffer(data, np.uint8)
            except OSError as exc:
                raise CheckpointError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if not header_bytes.startswith(b"{"):
            raise CheckpointError(f"{self.path}: corrupt safetensors header (it does not start with '{{')")
        header = strict_json(header_bytes, f"{self.path}: corrupt safetensors header:")
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: safetensors header is not a JSON object")
        metadata = header.pop("__metadata__", None)
        if metadata is not None and not (isinstance(metadata, dict)
                                         and all(isinstance(v, str) for v in metadata.values())):
            raise CheckpointError(f"{self.path}: __metadata__ must be a JSON object of strings")
        self.metadata = metadata or {}
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, spec in header.items():
            self.entries[name] = self._validate(name, spec)
        self._check_coverage()

    def _validate(self, name: str, spec: object) -> tuple[str, tuple[int, ...], int, int]:
        label = f"{self.path}: tensor {short(name, 80)}"
        if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= set(spec):
            raise CheckpointError(f"{label}: malformed header entry (needs dtype, shape and data_offsets): "
                                  f"{short(spec)}")
        dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
        if not isinstance(dtype, str) or dtype not in RAW_DTYPES:
            raise CheckpointError(f"{label} has unsupported dtype {short(dtype, 40)}; supported: {list(RAW_DTYPES)}")
        if not isinstance(shape, list) or not all(type(s) is int and 0 <= s <= MAX_DIM for s in shape):
            raise CheckpointError(f"{label} has invalid shape {short(shape)} (a list of non-negative integers)")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise CheckpointError(f"{label} has invalid data_offsets {short(offsets)} (two integers)")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise CheckpointError(f"{label} has invalid data_offsets {[begin, end]}")
        count = 1
        for s in shape:  # checked product, as the reference reader does
            count *= s
            if count > MAX_DIM:
                raise CheckpointError(f"{label}: shape {short(shape)} overflows (more than 2**63 elements)")
        nbytes = count * RAW_DTYPES[dtype].itemsize
        if end > self._data_len:
            raise CheckpointError(
                f"{label} ends at byte {end} of a {self._data_len}-byte data section: the file is truncated"
            )
        if end - begin != nbytes:
            raise CheckpointError(f"{label} spans {end - begin} bytes but {dtype}{shape} needs {nbytes}")
        if count == 0 and any(s > self._data_len + 1 for s in shape):  # numpy cannot hold absurd empty shapes
            raise CheckpointError(f"{label}: empty shape {short(shape)} has an implausibly large dimension")
        return dtype, tuple(shape), begin, end

    def _check_coverage(self) -> None:
        """Sorted by offset, every tensor begins where the previous ended and the last ends the file."""
        position, previous = 0, None
        for name, (_, _, begin, end) in sorted(self.entries.items(), key=lambda item: item[1][2:]):
            if begin != position:
                where = f"after {short(previous, 80)} ends at byte {position}" if previous else "at byte 0"
                kind = "overlaps the tensor before it" if begin < position else "leaves a gap"
                raise CheckpointError(f"{self.path}: tensor {short(name, 80)} starts at byte {begin}, {where}: "
                                      f"it {kind} (offsets must be contiguous)")
            position, previous = end, name
        if position != self._data_len:
            raise CheckpointError(f"{self.path}: the tensors cover {position} bytes but the data section holds "
                                  f"{self._data_len}: trailing bytes or a corrupt header")

    def keys(self) -> list[str]:
        return list(self.entries)

    def _data(self) -> np.ndarray:
        if self._buffer is None:
            if self._data_len == 0:
                self._buffer = np.empty(0, np.uint8)
            else:
                try:
                    self._buffer = np.memmap(self.path, np.uint8, "r", self._data_start, (self._data_len,))
                except (OSError, ValueError) as exc:
                    raise CheckpointError(f"cannot memory-map {self.path}: {exc}") from None
        return self._buffer

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of ``name`` as a read-only view (BF16 as uint16)."""
        dtype, shape, begin, end = self.entries[name]
        return self._data()[begin:end].view(RAW_DTYPES[dtype]).reshape(shape)

    def check_finite(self, name: str) -> None:
        """Refuse a floating tensor holding NaN or Inf, scanning it in chunks (no full-size temporary)."""
        stored = self.entries[name][0]
        if stored not in FLOAT_DTYPES:
            return
        flat = self.raw(name).reshape(-1)
        for start in range(0, flat.size, FINITE_CHUNK):
            chunk = flat[start:start + FINITE_CHUNK]
            if stored == "BF16":  # exponent bits all ones: Inf or NaN
                bad = (chunk & np.uint16(0x7F80)) == np.uint16(0x7F80)
                found = bool(bad.any())
            else:
                found = not bool(np.isfinite(chunk).all())
            if found:
                index = start + int(np.argmax(bad if stored == "BF16" else ~np.isfinite(chunk)))
                raise CheckpointError(f"{self.path}: tensor {name!r} holds a non-finite value (NaN or Inf) at flat "
                                      f"index {index}: the checkpoint is corrupt")

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
