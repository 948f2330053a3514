"""The safetensors reader at its edges (issue 21: survivors of the mechanical run over
refimpl/sources/safetensors_reader.py): the Hugging Face cache's blob root, file-size limits at, below and above,
the label errors name, an empty data section, and read-only converted tensors."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from refimpl import CheckpointError, ConfigError
from refimpl.sources import safetensors_reader as R
from verification.references.fixtures import exactly, write_raw_safetensors


def test_a_cache_snapshot_may_also_resolve_into_its_repos_blobs_only(tmp_path):
    snapshot = tmp_path / "models--acme--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    real = os.path.realpath(snapshot)
    assert R.allowed_roots(snapshot) == [real, os.path.join(os.path.dirname(os.path.dirname(real)), "blobs")]
    plain = tmp_path / "folder"
    plain.mkdir()
    assert R.allowed_roots(plain) == [os.path.realpath(plain)]


def test_a_file_beside_the_blobs_of_a_cache_repo_is_refused(tmp_path):
    repo = tmp_path / "models--acme--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "ok").write_bytes(b"fine")
    (repo / "secret").write_bytes(b"secret")
    (snapshot / "config.json").symlink_to(repo / "blobs" / "ok")
    (snapshot / "other.json").symlink_to(repo / "secret")
    assert R.read_regular(snapshot / "config.json", snapshot, 10) == b"fine"
    with pytest.raises(CheckpointError, match="resolves outside the model folder"):
        R.read_regular(snapshot / "other.json", snapshot, 10)


@pytest.mark.parametrize("size", [9, 10])
def test_read_regular_returns_a_file_up_to_its_limit_whole(tmp_path, size):
    path = tmp_path / "f.json"
    path.write_bytes(bytes(range(size)))
    assert R.read_regular(path, tmp_path, 10) == bytes(range(size))


def test_read_regular_refuses_a_file_one_byte_over_its_limit_by_its_label(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(bytes(11))
    with pytest.raises(ConfigError, match=exactly("the config is 11 bytes, more than the 10 this file type may hold")):
        R.read_regular(path, tmp_path, 10, ConfigError, "the config")
    with pytest.raises(CheckpointError, match=exactly(f"{path} is 11 bytes, more than the 10 this file type may hold")):
        R.read_regular(path, tmp_path, 10)


def test_read_regular_names_a_missing_file_by_its_label_or_path(tmp_path):
    with pytest.raises(ConfigError, match=exactly("the config does not exist")):
        R.read_regular(tmp_path / "missing.json", tmp_path, 10, ConfigError, "the config")
    with pytest.raises(CheckpointError, match=exactly(f"{tmp_path / 'missing.json'} does not exist")):
        R.read_regular(tmp_path / "missing.json", tmp_path, 10)


class SpyFile(io.BytesIO):
    """A file object recording how much each read asks for (and, with ``fail``, failing like a bad disk)."""

    def __init__(self, data, fail=False):
        super().__init__(data)
        self.asked, self.fail = [], fail

    def read(self, size=-1):
        self.asked.append(size)
        if self.fail:
            raise OSError(5, "Input/output error")
        return super().read(size)


@pytest.fixture()
def spy(tmp_path, monkeypatch):
    """read_regular on a real 4-byte file whose open file object is a SpyFile over 64 bytes (as if the file
    grew after its size was checked)."""
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(4))
    made = []

    def fdopen(fd, mode):
        os.close(fd)
        made.append(SpyFile(bytes(range(64)), fail=getattr(fdopen, "fail", False)))
        made[-1].fileno = lambda: os.open(path, os.O_RDONLY)
        return made[-1]

    monkeypatch.setattr(R.os, "fdopen", fdopen)
    return path, made, fdopen


def test_read_regular_reads_at_most_one_byte_past_its_limit_from_a_growing_file(spy, tmp_path):
    path, made, _ = spy
    assert R.read_regular(path, tmp_path, 10) == bytes(range(10))
    assert made[0].asked == [11]


def test_read_regular_names_a_read_error_by_its_label(spy, tmp_path):
    path, _, fdopen = spy
    fdopen.fail = True
    with pytest.raises(ConfigError, match=exactly("cannot read the config: Input/output error")):
        R.read_regular(path, tmp_path, 10, ConfigError, "the config")


def test_an_empty_data_section_reads_zero_size_tensors(tmp_path):
    path = tmp_path / "empty.safetensors"
    write_raw_safetensors(path, {"a": ("F32", np.zeros((1, 0), np.float32)), "b": ("BF16", np.zeros(0, np.uint16))})
    f = R.SafetensorsFile(path, tmp_path)
    a, b = f.tensor("a", np.dtype(np.float64)), f.tensor("b", np.dtype(np.float32))
    assert (a.shape, a.dtype, b.shape, b.dtype) == ((1, 0), np.float64, (0,), np.float32)
    assert f.raw("a").shape == (1, 0) and f.raw("a").dtype == np.float32 and f.raw("b").dtype == np.uint16


def test_a_tensor_converted_to_the_compute_dtype_is_read_only(tmp_path):
    path = tmp_path / "t.safetensors"
    write_raw_safetensors(path, {"w": ("F32", np.arange(3, dtype=np.float32))})
    for mmap in (True, False):
        value = R.SafetensorsFile(path, tmp_path, mmap=mmap).tensor("w", np.dtype(np.float64))
        assert value.dtype == np.float64 and value.flags.writeable is False
        with pytest.raises(ValueError):
            value[0] = 1.0


def test_a_non_floating_tensor_is_refused_by_name_and_stored_dtype(tmp_path):
    path = tmp_path / "t.safetensors"
    write_raw_safetensors(path, {"ids": ("I64", np.arange(3, dtype=np.int64))})
    with pytest.raises(CheckpointError, match=exactly(f"{path}: tensor 'ids' is I64, not a floating-point parameter")):
        R.SafetensorsFile(path, tmp_path).tensor("ids", np.dtype(np.float64))


@pytest.mark.parametrize("mmap", [True, False])
def test_a_one_byte_data_section_is_read(tmp_path, mmap):
    path = tmp_path / "one.safetensors"
    write_raw_safetensors(path, {"u": ("U8", np.array([7], np.uint8))})
    raw = R.SafetensorsFile(path, tmp_path, mmap=mmap).raw("u")
    assert raw.tolist() == [7] and raw.dtype == np.uint8


def write_header(path, header: dict, data: bytes):
    """A safetensors file with the given header entries (offsets as written) and data section."""
    import json

    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


LONG = "w" * 100  # a name longer than the 80 characters an error message shows


def test_tensors_listed_out_of_offset_order_are_read(tmp_path):
    data = np.arange(2, dtype=np.float32).tobytes() + np.arange(2, 4, dtype=np.float32).tobytes()
    path = write_header(tmp_path / "t.safetensors", {
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "z": {"dtype": "F32", "shape": [0], "data_offsets": [16, 16]}}, data)
    f = R.SafetensorsFile(path, tmp_path)
    assert f.tensor("a", np.dtype(np.float32)).tolist() == [0, 1] and f.tensor("b", np.dtype(np.float32)).tolist() == [2, 3]


def test_an_empty_tensor_at_the_end_of_the_one_before_sorts_after_it(tmp_path):
    path = write_header(tmp_path / "t.safetensors", {
        "z": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]},
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, np.zeros(2, np.float32).tobytes())
    assert R.SafetensorsFile(path, tmp_path).tensor("z", np.dtype(np.float32)).shape == (0,)


def test_a_gap_after_a_tensor_is_named_with_both_tensors(tmp_path):
    path = write_header(tmp_path / "t.safetensors", {
        LONG: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "b" + LONG: {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, bytes(12))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: tensor {R.short('b' + LONG, 80)} starts at byte 8, after {R.short(LONG, 80)} ends at byte 4: "
            "it leaves a gap (offsets must be contiguous)")):
        R.SafetensorsFile(path, tmp_path)
    assert R.short(LONG, 80) == repr(LONG)[:80] + "..."


def test_a_first_tensor_not_at_byte_0_and_an_overlap_are_named(tmp_path):
    path = write_header(tmp_path / "gap.safetensors", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
                        bytes(8))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: tensor 'a' starts at byte 4, at byte 0: it leaves a gap (offsets must be contiguous)")):
        R.SafetensorsFile(path, tmp_path)
    path = write_header(tmp_path / "overlap.safetensors", {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: tensor 'b' starts at byte 4, after 'a' ends at byte 8: it overlaps the tensor before it "
            "(offsets must be contiguous)")):
        R.SafetensorsFile(path, tmp_path)


def test_a_header_error_names_the_file_and_the_tensor_cut_to_80_characters(tmp_path):
    path = write_header(tmp_path / "t.safetensors", {LONG: {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
                        bytes(4))
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: tensor {R.short(LONG, 80)} spans 4 bytes but F32[2] needs 8")):
        R.SafetensorsFile(path, tmp_path)


def test_a_file_truncated_after_opening_cannot_be_memory_mapped_and_says_so(tmp_path):
    path = tmp_path / "t.safetensors"
    write_raw_safetensors(path, {"w": ("F32", np.arange(4, dtype=np.float32))})
    f = R.SafetensorsFile(path, tmp_path)
    size = path.stat().st_size
    os.truncate(path, size - 16)
    with pytest.raises(CheckpointError, match=f"^cannot memory-map {path}: .+"):
        f.tensor("w", np.dtype(np.float32))


@pytest.mark.parametrize("label, bits", [("BF16", 0x7FC1), ("BF16", 0xFF80), ("F32", None)])
def test_a_non_finite_first_element_is_found(tmp_path, label, bits):
    path = tmp_path / "t.safetensors"
    if label == "BF16":
        values = np.array([bits, 0x3F80, 0x3F80], np.uint16)  # a NaN with a payload / -inf, then 1.0, 1.0
    else:
        values = np.array([np.nan, 1.0, 1.0], np.float32)
    write_raw_safetensors(path, {"w": (label, values)})
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: tensor 'w' holds a non-finite value (NaN or Inf) at flat index 0: the checkpoint is corrupt")):
        R.SafetensorsFile(path, tmp_path).check_finite("w")


def test_the_finiteness_scan_allocates_one_chunk_not_the_tensor(tmp_path):
    import tracemalloc

    path = tmp_path / "big.safetensors"
    rows = 4
    write_raw_safetensors(path, {"w": ("F32", np.ones((rows, R.FINITE_CHUNK), np.float32))})
    f = R.SafetensorsFile(path, tmp_path)
    f.raw("w")  # map the file before measuring
    tracemalloc.start()
    try:
        f.check_finite("w")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * R.FINITE_CHUNK  # one chunk's booleans (1 byte each), not rows x chunk


def test_tensors_are_memory_mapped_by_default_and_copied_without_mmap(tmp_path):
    path = tmp_path / "t.safetensors"
    write_raw_safetensors(path, {"w": ("F32", np.zeros(2, np.float32))})
    mapped, copied = R.SafetensorsFile(path, tmp_path), R.SafetensorsFile(path, tmp_path, mmap=False)
    views = mapped.raw("w"), copied.raw("w")
    with open(path, "r+b") as fh:  # rewrite the data in place: a map sees it, a copy does not
        fh.seek(-8, os.SEEK_END)
        fh.write(np.array([1.5, 2.5], np.float32).tobytes())
    assert views[0].tolist() == [1.5, 2.5] and views[1].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("limit, refused", [(16, False), (15, True)])
def test_the_header_length_limit_at_and_below(tmp_path, monkeypatch, limit, refused):
    path = write_header(tmp_path / "t.safetensors", {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}},
                        bytes(1))
    n = int.from_bytes(path.read_bytes()[:8], "little")
    monkeypatch.setattr(R, "MAX_HEADER_BYTES", n - 16 + limit)
    if refused:
        with pytest.raises(CheckpointError, match=exactly(
                f"{path}: header length {n} exceeds the {n - 1}-byte limit of the format: corrupt or not safetensors")):
            R.SafetensorsFile(path, tmp_path)
    else:
        assert R.SafetensorsFile(path, tmp_path).keys() == ["a"]


@pytest.mark.parametrize("extra", [1, 8, 9])
def test_a_header_length_past_the_end_of_the_file_is_refused(tmp_path, extra):
    path = write_header(tmp_path / "t.safetensors", {}, b"")
    body = path.read_bytes()
    n = len(body) - 8
    path.write_bytes((n + extra).to_bytes(8, "little") + body[8:])
    with pytest.raises(CheckpointError, match=exactly(
            f"{path}: header length {n + extra} exceeds the file size {len(body)}: truncated or not safetensors")):
        R.SafetensorsFile(path, tmp_path)


def entry_error(tmp_path, spec, data=b""):
    path = write_header(tmp_path / "t.safetensors", {"x": spec}, data)
    with pytest.raises(CheckpointError) as info:
        R.SafetensorsFile(path, tmp_path)
    prefix = f"{path}: tensor 'x'"
    assert str(info.value).startswith(prefix)
    return str(info.value)[len(prefix):]


def test_header_entry_errors_show_the_offending_value(tmp_path):
    assert entry_error(tmp_path, {"dtype": "F32"}) == (
        ": malformed header entry (needs dtype, shape and data_offsets): {'dtype': 'F32'}")
    dtype = "Q" * 50
    assert entry_error(tmp_path, {"dtype": dtype, "shape": [], "data_offsets": [0, 0]}) == (
        f" has unsupported dtype {R.short(dtype, 40)}; supported: {list(R.RAW_DTYPES)}")
    assert R.short(dtype, 40) == repr(dtype)[:40] + "..."
    assert entry_error(tmp_path, {"dtype": "F32", "shape": [1], "data_offsets": [0]}) == (
        " has invalid data_offsets [0] (two integers)")
    assert entry_error(tmp_path, {"dtype": "F32", "shape": [2**62, 4], "data_offsets": [0, 0]}) == (
        f": shape {[2**62, 4]} overflows (more than 2**63 elements)")
    assert entry_error(tmp_path, {"dtype": "F32", "shape": [2], "data_offsets": [4, 8]}, bytes(8)) == (
        " spans 4 bytes but F32[2] needs 8")


@pytest.mark.parametrize("dim, message", [
    (R.MAX_DIM, " ends at byte 1 of a 0-byte data section: the file is truncated"),
    (R.MAX_DIM + 1, f" has invalid shape [{R.MAX_DIM + 1}] (a list of non-negative integers)")])
def test_a_dimension_and_an_element_count_at_and_above_the_largest(tmp_path, dim, message):
    assert entry_error(tmp_path, {"dtype": "U8", "shape": [dim], "data_offsets": [0, 1]}) == message


@pytest.mark.parametrize("dim, refused", [(9, False), (10, True)])
def test_an_empty_shape_may_not_be_wider_than_the_data_section_plus_one(tmp_path, dim, refused):
    spec = {"x": {"dtype": "U8", "shape": [0, dim], "data_offsets": [0, 0]},
            "y": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}
    path = write_header(tmp_path / "t.safetensors", spec, bytes(8))
    if refused:
        with pytest.raises(CheckpointError, match=exactly(
                f"{path}: tensor 'x': empty shape [0, 10] has an implausibly large dimension")):
            R.SafetensorsFile(path, tmp_path)
    else:
        assert R.SafetensorsFile(path, tmp_path).raw("x").shape == (0, 9)
