"""Conformance files member by member: .npy versions, the dtype-size bound at its edge, failed checks' fields,
negative token ids and the reference writer (mutants of these survived the hostile-file tests)."""

import copy
import io
import json
import re
import zipfile

import numpy as np
import pytest

import refimpl
from refimpl.errors import ConformanceError
from verification import conformance
from verification.policy.tolerances import tolerance
from verification.references.fixtures import FAMILIES, family_config, exactly as _exactly, gpt_neo_config, random_tensors, write_checkpoint


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tmp_path_factory):
    config = family_config(request.param, vocab=61, d_model=16, n_layers=2, n_heads=2, window=4, n_ctx=32)
    return refimpl.load(write_checkpoint(tmp_path_factory.mktemp("confm"), config, random_tensors(config, seed=1)),
                        dtype="float64")


META = {"observables": {"a": {"3": 1.0, "4": -1.0}}, "layernorm": "ignore", "dtype": "float64"}


def _npy(array, version=(1, 0)) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), version=version, allow_pickle=False)
    return buffer.getvalue()


def _zip(path, members: dict):
    """members: {key: .npy bytes}; ``__meta__`` defaults to META in version 1.0."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__meta__.npy", members.pop("__meta__", _npy(np.array(json.dumps(META)))))
        for key, data in members.items():
            zf.writestr(key + ".npy", data)
    return path


def test_version_2_members_are_read_like_version_1(tmp_path, model):
    y = refimpl.head_features(model, refimpl.observable(model, {3: 1.0, 4: -1.0}))[1, 0]
    for version in [(1, 0), (2, 0)]:
        path = _zip(tmp_path / f"v{version[0]}.npz", {"feature/a/1.0": _npy(y, version),
                                                       "__meta__": _npy(np.array(json.dumps(META)), version)})
        (check,) = conformance.check_file(path, model)
        assert check.passed and check.measured == 0.0


def test_version_3_members_are_refused_by_name(tmp_path, model):
    path = _zip(tmp_path / "v3.npz", {"norm/a/0.0": _npy(np.float64(1.0), (3, 0))})
    with pytest.raises(ConformanceError, match=_exactly(f"{path}: member 'norm/a/0.0' has .npy format version "
                                                        "(3, 0); only 1.0 and 2.0 are read")):
        conformance.check_file(path, model)


@pytest.mark.parametrize("dtype, refused", [("S15", False), ("S16", False), ("S17", True)])
def test_a_member_of_more_than_16_bytes_per_element_is_refused_at_the_bound(tmp_path, model, dtype, refused):
    """16 bytes per element (complex128) is the widest numeric kind; one byte more is refused unread."""
    path = _zip(tmp_path / "s.npz", {"norm/a/0.0": _npy(np.array(b"x", dtype=dtype))})
    if refused:
        with pytest.raises(ConformanceError, match=_exactly(
                f"{path}: member 'norm/a/0.0' has shape () of |S17 (17 bytes); the format allows at most "
                "1 element(s), 16 per dimension")):
            conformance.check_file(path, model)
    else:
        (check,) = conformance.check_file(path, model)
        assert not check.passed and check.detail == f"values of dtype |{dtype}, not numbers"


@pytest.mark.parametrize("extra, refused", [(0, False), (1, True)])
def test_meta_is_bounded_at_its_character_limit(tmp_path, model, extra, refused):
    text = json.dumps(META)
    text = text + " " * (conformance.MAX_META_CHARS - len(text) + extra)  # JSON allows trailing white space
    path = _zip(tmp_path / "meta.npz", {"__meta__": _npy(np.array(text)), "norm/a/0.0": _npy(np.float64(1.0))})
    if refused:
        with pytest.raises(ConformanceError, match=re.escape(f"member '__meta__' has shape () of <U{len(text)}")):
            conformance.check_file(path, model)
    else:
        (check,) = conformance.check_file(path, model)
        assert check.name == "conformance norm/a/0.0"


def test_an_oversized_member_reports_its_bytes(tmp_path, model):
    path = _zip(tmp_path / "big.npz", {"feature/a/0.0": _npy(np.zeros(17))})
    with pytest.raises(ConformanceError, match=_exactly(
            f"{path}: member 'feature/a/0.0' has shape (17,) of float64 (136 bytes); the format allows at most "
            "16 element(s), 16 per dimension")):
        conformance.check_file(path, model)


def test_a_long_member_name_is_cut_to_80_characters(tmp_path, model):
    key = "feature/" + "x" * 100 + "/0.0"
    path = _zip(tmp_path / "long.npz", {key: _npy(np.zeros(17))})
    with pytest.raises(ConformanceError) as info:
        conformance.check_file(path, model)
    assert f"member {repr(key)[:80]}... has shape (17,)" in str(info.value)


def test_a_failed_entry_is_a_failed_check_with_every_field(tmp_path, model):
    path = _zip(tmp_path / "unknown.npz", {"whatever/a/0.0": _npy(np.float64(1.0))})
    (check,) = conformance.check_file(path, model)
    assert check.passed is False
    assert check.measured == float("inf") and check.reference == 0.0 and check.group == "conformance"
    assert check.name == "conformance whatever/a/0.0"


def test_a_negative_token_id_in_meta_is_read_as_an_id(tmp_path, model):
    meta = {**META, "observables": {"a": {"-5": 1.0}}}
    path = _zip(tmp_path / "neg.npz", {"__meta__": _npy(np.array(json.dumps(meta))),
                                       "norm/a/0.0": _npy(np.float64(1.0))})
    with pytest.raises(ConformanceError, match=_exactly(f"{path}: observable 'a' of __meta__: token id -5 in the "
                                                        "observable is out of range [0, 61)")):
        conformance.check_file(path, model)


@pytest.mark.parametrize("dtype", [None, "float32"])
def test_write_reference_records_the_dtype_and_every_ordered_pair(tmp_path, model, dtype):
    observables = {"a": {3: 1.0, 4: -1.0}, "b": {5: 1.0}}
    path = conformance.write_reference(tmp_path / "ref.npz", model, observables, dtype=dtype)
    with np.load(path) as data:
        meta = json.loads(str(data["__meta__"]))
        keys = set(data.files)
        cosine = float(data["cosine/b->a/1.1"])
    assert meta["dtype"] == (dtype or "float64")
    pairs = {k.split("/")[1] for k in keys if k.startswith(("cosine/", "coupling/"))}
    assert pairs == {"a->b", "b->a"}
    features = {n: refimpl.head_features(model, refimpl.observable(model, s)) for n, s in observables.items()}
    assert cosine == pytest.approx(refimpl.cosine(features["b"][1, 1], features["a"][1, 1]), rel=1e-15)


# ---------------------------------------------------------------------------------------------------------------
# Every entry, every field, every refusal: the tests below pin each message in full, each Check field, the oracle
# (a float64 reload of a float32 model), the snippet (source, code, got at precision 8 / threshold 8), the
# VANISHING floor, the reference scales and the tolerance at, just below and just above its value.

TOL64, TOL32 = tolerance("conformance", "float64"), tolerance("conformance", "float32")
A, B = {3: 1.0, 4: -1.0}, {5: 20.0}
GOT16 = (np.arange(16) + 1) / 7  # more digits than precision 8 (or 9) shows, more entries than threshold 8
GOT16_TEXT = "[0.14285714 0.28571429 0.42857143 ... 2.         2.14285714 2.28571429]"


@pytest.fixture(scope="module")
def model32(model):
    """The fixture's checkpoint (stored in float32) computing in float32."""
    return refimpl.load(model.path, dtype="float32")


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """d_model 9 (3 heads of 3): head 0.0's W_O scaled by 1e-9 (its feature all but vanishes) and tokens 5 and 6
    with one embedding (the observable {5: 1, 6: -1} has W_U^T n = 0 exactly: every feature is zero)."""
    config = gpt_neo_config(vocab=61, d_model=9, n_layers=2, n_heads=3, window=4, n_ctx=32)
    tensors = random_tensors(config, seed=2)
    tensors["transformer.h.0.attn.attention.out_proj.weight"][:, 0:3] *= 1e-9
    tensors["transformer.wte.weight"][6] = tensors["transformer.wte.weight"][5]
    return refimpl.load(write_checkpoint(tmp_path_factory.mktemp("odd"), config, tensors), dtype="float64")


def _meta_npy(meta) -> bytes:
    return _npy(np.array(json.dumps(meta)))


def _without(key) -> dict:
    return {k: v for k, v in META.items() if k != key}


def _feature(model, spec, l, h):
    return refimpl.head_features(model, refimpl.observable(model, spec))[l, h]


def _cut(value, limit):
    """``repr(value)`` as refimpl's ``short(value, limit)`` shows it: cut to ``limit`` characters, then "..."."""
    return repr(value) if len(repr(value)) <= limit else repr(value)[:limit] + "..."


def _snippet(source, code, got_text, error, tol, dtype):
    """The reproducing snippet of a failed entry, as the module docstring promises it."""
    return (f"import numpy as np, refimpl\nm = refimpl.load({source!r}, dtype='float64')\nexpected = {code}\n"
            f"# got {got_text}; relative error {error:.3e} > tolerance {tol:g} ({dtype})")


def _assert_failed(check, key, detail, tol=TOL64):
    assert check.name == f"conformance {key}"
    assert check.passed is False
    assert check.measured == float("inf") and isinstance(check.measured, float)
    assert check.reference == 0.0 and check.tolerance == tol and check.group == "conformance"
    assert check.detail == detail


def test_every_bad_entry_of_a_file_is_reported_with_its_reason(tmp_path, model):
    """Two entries of each kind of bad entry, so that none stops the loop over the file's keys."""
    npy = {"shape": _npy(np.zeros(3)), "scalar": _npy(np.float64(1.0)), "scalar_vector": _npy(np.ones(1)),
           "text": _npy(np.array(b"x", dtype="S1"))}
    unknown = ("unknown key; keys look like feature/NAME/L.H, norm/NAME/L.H, cosine/A->B/L.H, "
               "coupling/A->B/L.H")
    entries = {
        "feature/a/0.0": ("shape", "shape (3,), expected shape (16,)"),
        "feature/a/0.1": ("shape", "shape (3,), expected shape (16,)"),
        "norm/a/1.1": ("scalar_vector", "shape (1,), expected shape ()"),
        "feature/a->b/1.0": ("scalar", "observable(s) ['a->b'] not all in __meta__ observables ['a']"),
        "cosine/a/0.0": ("scalar", "observable(s) ['a'] not all in __meta__ observables ['a']"),
        "coupling/a->q/0.0": ("scalar", "observable(s) ['a', 'q'] not all in __meta__ observables ['a']"),
        "norm/q/0.0": ("scalar", "observable(s) ['q'] not all in __meta__ observables ['a']"),
        "norm/r/0.0": ("scalar", "observable(s) ['r'] not all in __meta__ observables ['a']"),
        "norm/a/2.0": ("scalar", "no head 2.0: the model has 2 layers of 2 heads"),
        "norm/a/0.2": ("scalar", "no head 0.2: the model has 2 layers of 2 heads"),
        "norm/a/1.0": ("text", "values of dtype |S1, not numbers"),
        "cosine/a->a/1.0": ("text", "values of dtype |S1, not numbers"),
        "zz/1": ("scalar", unknown),
        "zz/2": ("scalar", unknown),
    }
    path = _zip(tmp_path / "bad.npz", {key: npy[kind] for key, (kind, _) in entries.items()})
    checks = conformance.check_file(path, model)
    assert [c.name for c in checks] == [f"conformance {key}" for key in sorted(entries)]
    for check, key in zip(checks, sorted(entries)):
        _assert_failed(check, key, entries[key][1])


def test_a_passing_entry_has_every_field_and_no_snippet(tmp_path, model):
    y = _feature(model, A, 1, 0)
    norm = np.linalg.norm(_feature(model, A, 0, 1))
    path = _zip(tmp_path / "ok.npz", {"feature/a/1.0": _npy(y), "norm/a/0.1": _npy(norm)})
    for check, key in zip(conformance.check_file(path, model), ["feature/a/1.0", "norm/a/0.1"]):
        assert check.name == f"conformance {key}"
        assert check.passed is True and check.measured == 0.0 and check.reference == 0.0
        assert check.tolerance == TOL64 and check.group == "conformance" and check.detail == ""


def test_a_float32_model_is_checked_against_its_float64_reload(tmp_path, model, model32):
    """The oracle is float64 whatever the model passed: a float64 reference then matches exactly."""
    path = conformance.write_reference(tmp_path / "ref.npz", model, {"a": A, "b": B})
    checks32 = conformance.check_file(path, model32)
    checks64 = conformance.check_file(path, model)
    assert len(checks64) == 4 * 8  # 4 heads x (2 features, 2 norms, 2 cosines, 2 couplings)
    assert [(c.name, c.passed, c.measured, c.detail) for c in checks32] == \
           [(c.name, True, 0.0, "") for c in checks64]
    assert all(c.measured == 0.0 and c.passed is True for c in checks64)


def test_a_float64_model_is_its_own_oracle_never_reloaded(tmp_path, model):
    path = conformance.write_reference(tmp_path / "ref.npz", model, {"a": A})
    moved = copy.copy(model)
    moved.path = tmp_path / "no-such-checkpoint"
    checks = conformance.check_file(path, moved)
    assert [(c.passed, c.measured) for c in checks] == [(True, 0.0)] * 8


def _failing_norm_file(tmp_path, model):
    return _zip(tmp_path / "norm.npz", {"norm/a/0.1": _npy(np.float64(0.5))})


def _norm_detail(model, source):
    expected = float(np.linalg.norm(_feature(model, A, 0, 1)))
    code = "np.linalg.norm(refimpl.head_features(m, refimpl.observable(m, {3: 1.0, 4: -1.0}))[0, 1])"
    return _snippet(source, code, "0.5", abs(0.5 - expected) / expected, TOL64, "float64")


def test_the_snippet_loads_the_model_source_given(tmp_path, model):
    (check,) = conformance.check_file(_failing_norm_file(tmp_path, model), model, model_source="EleutherAI/gpt-neo-x")
    assert check.passed is False
    assert check.detail == _norm_detail(model, "EleutherAI/gpt-neo-x")


def test_the_snippet_loads_the_models_own_source_by_default(tmp_path, model):
    named = copy.copy(model)
    named.source = "some/hub-id"
    (check,) = conformance.check_file(_failing_norm_file(tmp_path, model), named)
    assert check.detail == _norm_detail(model, "some/hub-id")
    (check,) = conformance.check_file(_failing_norm_file(tmp_path, model), model)
    assert check.detail == _norm_detail(model, str(model.path)) and model.source == str(model.path)


def test_the_snippet_falls_back_to_the_model_path_without_a_source(tmp_path, model):
    anonymous = copy.copy(model)
    anonymous.source = None
    (check,) = conformance.check_file(_failing_norm_file(tmp_path, model), anonymous)
    assert check.detail == _norm_detail(model, str(model.path))


def test_failed_feature_norm_cosine_and_coupling_snippets_in_full(tmp_path, model):
    meta = {**META, "observables": {"a": {"3": 1.0, "4": -1.0}, "b": {"5": 20.0}}}
    y = _feature(model, A, 1, 0)
    cos = float(refimpl.cosine(_feature(model, A, 1, 1), _feature(model, B, 1, 1)))
    coupling = float(refimpl.coupling(_feature(model, A, 0, 0), _feature(model, B, 0, 0)))
    assert abs(coupling) > 1 and abs(cos) < 1  # the coupling's reference scale is |coupling|, the cosine's is 1
    coupling_got = coupling * (1 + 1e-6)
    path = _zip(tmp_path / "fail.npz", {"__meta__": _meta_npy(meta), "feature/a/1.0": _npy(GOT16),
                                        "norm/b/0.1": _npy(np.int64(3)), "cosine/a->b/1.1": _npy(np.float64(0.5)),
                                        "coupling/a->b/0.0": _npy(np.float64(coupling_got))})
    checks = {c.name.split()[1]: c for c in conformance.check_file(path, model, model_source="src")}
    assert sorted(checks) == ["cosine/a->b/1.1", "coupling/a->b/0.0", "feature/a/1.0", "norm/b/0.1"]
    a_code, b_code = ("refimpl.head_features(m, refimpl.observable(m, {3: 1.0, 4: -1.0}))",
                      "refimpl.head_features(m, refimpl.observable(m, {5: 20.0}))")

    error = float(np.linalg.norm(GOT16 - y) / np.linalg.norm(y))
    assert checks["feature/a/1.0"].measured == pytest.approx(error, rel=1e-12)
    assert checks["feature/a/1.0"].detail == _snippet("src", f"{a_code}[1, 0]", GOT16_TEXT, error, TOL64, "float64")

    norm = float(np.linalg.norm(_feature(model, B, 0, 1)))
    error = abs(3 - norm) / norm
    assert checks["norm/b/0.1"].measured == pytest.approx(error, rel=1e-12)
    assert checks["norm/b/0.1"].detail == _snippet("src", f"np.linalg.norm({b_code}[0, 1])", "3.", error, TOL64,
                                                   "float64")

    error = abs(0.5 - cos)  # reference scale max(1, |cos|) = 1
    assert checks["cosine/a->b/1.1"].measured == pytest.approx(error, rel=1e-12)
    assert checks["cosine/a->b/1.1"].detail == _snippet(
        "src", f"refimpl.cosine({a_code}[1, 1], {b_code}[1, 1])", "0.5", error, TOL64, "float64")

    error = abs(coupling_got - coupling) / abs(coupling)  # reference scale |coupling| > 1
    assert checks["coupling/a->b/0.0"].measured == pytest.approx(error, rel=1e-12)
    assert checks["coupling/a->b/0.0"].measured == pytest.approx(1e-6, rel=1e-6)
    assert checks["coupling/a->b/0.0"].detail == _snippet(
        "src", f"refimpl.coupling({a_code}[0, 0], {b_code}[0, 0])", np.array2string(np.float64(coupling_got),
                                                                                   precision=8), error, TOL64,
        "float64")
    for check in checks.values():
        assert check.passed is False and check.reference == 0.0 and check.tolerance == TOL64
        assert check.group == "conformance"


def test_the_snippet_prints_got_at_precision_8_whatever_the_print_options(tmp_path, model):
    path = _zip(tmp_path / "fail.npz", {"feature/a/1.0": _npy(GOT16)})
    with np.printoptions(precision=3, threshold=1000):
        (check,) = conformance.check_file(path, model)
    assert f"\n# got {GOT16_TEXT}; relative error " in check.detail


def test_the_snippet_summarises_got_above_8_entries(tmp_path, odd):
    """d_model 9: nine entries are one more than the threshold, so the middle three are summarised."""
    got = (np.arange(9) + 1) / 7
    path = _zip(tmp_path / "nine.npz", {"feature/a/1.2": _npy(got)})
    (check,) = conformance.check_file(path, odd, model_source="odd")
    y = _feature(odd, A, 1, 2)
    error = float(np.linalg.norm(got - y) / np.linalg.norm(y))
    assert check.detail == _snippet(
        "odd", "refimpl.head_features(m, refimpl.observable(m, {3: 1.0, 4: -1.0}))[1, 2]",
        "[0.14285714 0.28571429 0.42857143 ... 1.         1.14285714 1.28571429]", error, TOL64, "float64")


def test_a_vanishing_head_is_judged_against_a_millionth_of_the_largest_head(tmp_path, odd):
    spec = {3: 50.0}
    features = refimpl.head_features(odd, refimpl.observable(odd, spec))
    largest = max(float(np.linalg.norm(features[l, h])) for l in range(2) for h in range(3))
    tiny, normal = features[0, 0], features[1, 2]
    floor = conformance.VANISHING * largest
    assert conformance.VANISHING == 1e-6 and largest > 10 and 0 < np.linalg.norm(tiny) < floor / 100
    assert largest < float(np.linalg.norm(features))  # the whole tensor's norm is not the largest head's
    step = np.zeros(9)
    step[4] = 1e-12
    meta = {**META, "observables": {"a": {"3": 50.0}}}
    tiny_norm = float(np.linalg.norm(tiny))
    path = _zip(tmp_path / "tiny.npz", {"__meta__": _meta_npy(meta), "feature/a/0.0": _npy(tiny + step),
                                        "norm/a/0.0": _npy(np.float64(tiny_norm + 1e-16)),
                                        "feature/a/1.2": _npy(normal + step)})
    checks = {c.name.split()[1]: c for c in conformance.check_file(path, odd)}
    expect = {"feature/a/0.0": float(np.linalg.norm(tiny + step - tiny)) / floor,  # floored: 1e-12 / floor
              "norm/a/0.0": abs((tiny_norm + 1e-16) - tiny_norm) / floor,  # 1e-16 / 1e-8 would fail, / floor passes
              "feature/a/1.2": float(np.linalg.norm(normal + step - normal) / np.linalg.norm(normal))}  # not floored
    for key, value in expect.items():
        assert checks[key].measured == pytest.approx(value, rel=1e-9), key
    assert checks["feature/a/0.0"].measured == pytest.approx(1e-12 / floor, rel=1e-3)
    assert checks["feature/a/0.0"].passed is False and checks["feature/a/0.0"].detail.startswith("import numpy")
    assert checks["norm/a/0.0"].passed is True and checks["norm/a/0.0"].detail == ""
    assert checks["feature/a/1.2"].passed is True and checks["feature/a/1.2"].detail == ""


@pytest.mark.parametrize("dtype, tol", [(None, TOL32), ("float32", TOL32), ("float64", TOL64)])
def test_a_zero_feature_is_judged_by_its_absolute_error_at_just_below_and_just_above_the_tolerance(
        tmp_path, odd, dtype, tol):
    """Every feature of {5: 1, 6: -1} is exactly 0 here (tokens 5 and 6 share their embedding): the largest head is
    0, the reference scale 0, the error |got|. Without a dtype in __meta__ the float32 tolerance applies."""
    assert not refimpl.head_features(odd, refimpl.observable(odd, {5: 1.0, 6: -1.0})).any()
    meta = {"observables": {"z": {"5": 1.0, "6": -1.0}}, "layernorm": "ignore"}
    if dtype:
        meta["dtype"] = dtype
    values = {"below": np.nextafter(tol, 0.0), "at": tol, "above": np.nextafter(tol, 1.0)}
    members = {"__meta__": _meta_npy(meta)}
    for i, value in enumerate(values.values()):
        got = np.zeros(9)
        got[2] = value
        members[f"feature/z/1.{i}"] = _npy(got)
    members["norm/z/0.0"] = _npy(np.float64(values["above"]))
    checks = conformance.check_file(_zip(tmp_path / "zero.npz", members), odd, model_source="odd")
    assert [c.name for c in checks] == ["conformance feature/z/1.0", "conformance feature/z/1.1",
                                        "conformance feature/z/1.2", "conformance norm/z/0.0"]
    for check, value in zip(checks, [*values.values(), values["above"]]):
        assert check.measured == value and check.tolerance == tol and check.reference == 0.0
        assert check.group == "conformance"
    below, at, above, norm = checks
    assert below.passed is True and below.detail == ""
    assert at.passed is True and at.detail == ""
    assert above.passed is False and norm.passed is False
    shown = dtype or "float32"
    assert above.detail == _snippet("odd", "refimpl.head_features(m, refimpl.observable(m, {5: 1.0, 6: -1.0}))[1, 2]",
                                    np.array2string(np.eye(9)[2] * values["above"], precision=8, threshold=8),
                                    values["above"], tol, shown)
    assert above.detail.endswith(f"relative error {values['above']:.3e} > tolerance {tol:g} ({shown})")
    assert norm.detail == _snippet(
        "odd", "np.linalg.norm(refimpl.head_features(m, refimpl.observable(m, {5: 1.0, 6: -1.0}))[0, 0])",
        np.array2string(np.float64(values["above"]), precision=8), values["above"], tol, shown)


def test_a_fortran_order_member_is_read_in_fortran_order(tmp_path, model):
    """A 1-d Fortran member is checked like a C one; 2-d members come back as written, in either order."""
    def raw(array, fortran):
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                      "fortran_order": fortran, "shape": array.shape})
        buffer.write(array.tobytes(order="F" if fortran else "C"))
        return buffer.getvalue()

    y = _feature(model, A, 1, 0)
    path = _zip(tmp_path / "f1.npz", {"feature/a/1.0": raw(y, True)})
    (check,) = conformance.check_file(path, model)
    assert check.passed is True and check.measured == 0.0
    square = np.arange(16.0).reshape(4, 4)
    path = _zip(tmp_path / "f2.npz", {"feature/a/0.0": raw(square, True), "feature/a/0.1": raw(square, False)})
    meta, members = conformance.read_conformance_file(path, 16)
    assert meta == META and sorted(members) == ["feature/a/0.0", "feature/a/0.1"]
    assert members["feature/a/0.0"].tolist() == square.tolist()
    assert members["feature/a/0.1"].tolist() == square.tolist()


def test_a_truncated_member_is_refused_and_trailing_bytes_are_ignored(tmp_path, model):
    y = _feature(model, A, 0, 0)
    path = _zip(tmp_path / "trail.npz", {"feature/a/0.0": _npy(y) + b"trailing bytes"})
    (check,) = conformance.check_file(path, model)
    assert check.passed is True and check.measured == 0.0
    path = _zip(tmp_path / "short.npz", {"norm/a/0.0": _npy(np.float64(1.0))[:-4]})
    with pytest.raises(ConformanceError, match=_exactly(
            f"{path}: member 'norm/a/0.0' is truncated: 4 of 8 data bytes")):
        conformance.check_file(path, model)


def test_the_width_bound_is_d_model_and_at_least_one(tmp_path):
    path = _zip(tmp_path / "w.npz", {"norm/a/0.0": _npy(np.zeros(2))})
    for d_model in (0, 1):
        with pytest.raises(ConformanceError, match=_exactly(
                f"{path}: member 'norm/a/0.0' has shape (2,) of float64 (16 bytes); the format allows at most "
                "1 element(s), 1 per dimension")):
            conformance.read_conformance_file(path, d_model)
    path = _zip(tmp_path / "z.npz", {"norm/a/0.0": _npy(np.zeros((2, 0)))})
    with pytest.raises(ConformanceError, match=_exactly(
            f"{path}: member 'norm/a/0.0' has shape (2, 0) of float64 (0 bytes); the format allows at most "
            "1 element(s), 1 per dimension")):
        conformance.read_conformance_file(path, 1)


def test_the_member_count_is_bounded_at_max_members(tmp_path, model, monkeypatch):
    monkeypatch.setattr(conformance, "MAX_MEMBERS", 3)
    scalar = _npy(np.float64(1.0))
    for count in (2, 3):
        path = _zip(tmp_path / f"n{count}.npz", {f"zz/{i}": scalar for i in range(count - 1)})
        assert len(conformance.check_file(path, model)) == count - 1
    path = _zip(tmp_path / "n4.npz", {f"zz/{i}": scalar for i in range(3)})
    with pytest.raises(ConformanceError, match=_exactly(f"{path} holds 4 members, more than 3")):
        conformance.check_file(path, model)


def test_a_member_that_is_not_npy_is_refused_by_its_cut_name(tmp_path, model):
    name = "n" * 100 + ".txt"
    path = tmp_path / "txt.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__meta__.npy", _meta_npy(META))
        zf.writestr(name, b"text")
    with pytest.raises(ConformanceError, match=_exactly(f"{path}: member {repr(name)[:80]}... is not a .npy array")):
        conformance.check_file(path, model)


def test_a_member_that_appears_twice_is_refused_by_its_cut_name(tmp_path, model):
    key = "norm/" + "d" * 100 + "/0.0"
    path = tmp_path / "twice.npz"
    with zipfile.ZipFile(path, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("__meta__.npy", _meta_npy(META))
        zf.writestr(key + ".npy", _npy(np.float64(1.0)))
        zf.writestr(key + ".npy", _npy(np.float64(2.0)))
    with pytest.raises(ConformanceError, match=_exactly(f"{path}: member {repr(key)[:80]}... appears twice")):
        conformance.check_file(path, model)


def test_a_missing_file_and_a_directory_are_refused(tmp_path, model):
    path = tmp_path / "missing.npz"
    with pytest.raises(ConformanceError, match=_exactly(f"{path} does not exist")):
        conformance.check_file(path, model)
    with pytest.raises(ConformanceError, match=_exactly(f"{tmp_path} is a directory, not a regular file")):
        conformance.read_conformance_file(tmp_path, 16)


def test_a_file_that_is_not_a_zip_names_the_exception(tmp_path, model):
    path = tmp_path / "text.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ConformanceError, match=_exactly(
            f"{path} is not a readable conformance .npz (zip of .npy arrays): BadZipFile: 'File is not a zip file'")):
        conformance.check_file(path, model)


def test_a_long_reading_error_is_cut_to_160_characters(tmp_path, model):
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (), '" + "k" * 200 + "': 1, }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    raw = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1") + bytes(8)
    with pytest.raises(ValueError) as numpy_error:
        stream = io.BytesIO(raw)
        np.lib.format.read_magic(stream)
        np.lib.format.read_array_header_1_0(stream)
    text = str(numpy_error.value)
    assert len(repr(text)) > 200
    path = _zip(tmp_path / "header.npz", {"norm/a/0.0": raw})
    with pytest.raises(ConformanceError, match=_exactly(
            f"{path} is not a readable conformance .npz (zip of .npy arrays): ValueError: {repr(text)[:160]}...")):
        conformance.check_file(path, model)


def _read_meta(tmp_path, meta, name="meta.npz"):
    text = meta if isinstance(meta, str) else json.dumps(meta)
    path = _zip(tmp_path / name, {"__meta__": _npy(np.array(text)), "norm/a/0.0": _npy(np.float64(1.0))})
    return path, (lambda: conformance.read_conformance_file(path, 16))


def test_unknown_meta_keys_are_listed_five_at_most_each_cut_to_40(tmp_path):
    long_key = "u" * 45
    meta = {**META, **{f"k{i}": 1 for i in range(5)}, long_key: 1}
    path, read = _read_meta(tmp_path, meta)
    with pytest.raises(ConformanceError, match=_exactly(
            f"{path}: __meta__ has unknown keys ['k0', 'k1', 'k2', 'k3', 'k4']; "
            "known: ['observables', 'layernorm', 'dtype']")):
        read()
    path, read = _read_meta(tmp_path, {**META, long_key: 1, "k": 1}, "long.npz")
    with pytest.raises(ConformanceError, match=_exactly(
            f"{path}: __meta__ has unknown keys ['k', '{'u' * 40}']; known: ['observables', 'layernorm', 'dtype']")):
        read()


def test_observables_that_are_not_a_mapping_are_shown_cut_to_80(tmp_path):
    observables = "o" * 100
    path, read = _read_meta(tmp_path, {**META, "observables": observables})
    with pytest.raises(ConformanceError, match=_exactly(
            f"{path}: __meta__ 'observables' must be a non-empty mapping of name -> {{token: weight}}, "
            f"got {repr(observables)[:80]}...")):
        read()


@pytest.mark.parametrize("name", ["a->b", "", "n" * 50 + "/", "->" + "n" * 50])
def test_observable_names_that_are_empty_or_hold_a_separator_are_refused(tmp_path, name):
    path, read = _read_meta(tmp_path, {**META, "observables": {name: {"3": 1.0}}})
    with pytest.raises(ConformanceError, match=_exactly(
            f"{path}: observable name {_cut(name, 40)} is empty or holds '/' or '->'")):
        read()


@pytest.mark.parametrize("name, spec, text, shown", [
    ("a", {}, None, "{}"),
    ("a", {"3": "x"}, None, "{'3': 'x'}"),
    ("a", {"3": True}, None, "{'3': True}"),
    ("a", {"3": 1.0, "4": None}, None, "{'3': 1.0, '4': None}"),
    ("a", None, '{"a": {"3": 1e400}}', "{'3': inf}"),
    ("a", ["w" * 100], None, repr(["w" * 100])[:80] + "..."),
    ("a", {"3": "w" * 100}, None, repr({"3": "w" * 100})[:80] + "..."),
    ("n" * 50, [], None, "[]"),
])
def test_observable_specs_must_map_tokens_to_finite_numbers(tmp_path, name, spec, text, shown):
    """Booleans and 1e400 (inf once parsed) are refused; names are cut to 40 characters, specs to 80."""
    observables = text or json.dumps({name: spec})
    path, read = _read_meta(tmp_path, '{"observables": ' + observables + ', "layernorm": "ignore"}')
    with pytest.raises(ConformanceError, match=_exactly(
            f"{path}: observable {_cut(name, 40)} must map tokens to finite numbers, got {shown}")):
        read()


def test_a_valid_spec_with_int_and_float_weights_is_read_as_written(tmp_path):
    observables = {"a": {"3": 1, "4": -2.5}, "b": {" she": 1e-3}}
    path, read = _read_meta(tmp_path, {"observables": observables})
    meta, members = read()
    assert meta == {"observables": observables} and list(members) == ["norm/a/0.0"]
    assert members["norm/a/0.0"].dtype == np.float64 and members["norm/a/0.0"][()] == 1.0


@pytest.mark.parametrize("drop", ["layernorm", "dtype"])
def test_meta_without_layernorm_or_dtype_is_accepted(tmp_path, model, drop):
    path, read = _read_meta(tmp_path, _without(drop))
    meta, _ = read()
    assert meta == _without(drop)
    (check,) = conformance.check_file(path, model)
    assert check.tolerance == (TOL32 if drop == "dtype" else TOL64)


@pytest.mark.parametrize("layernorm", ["exact", None, "IGNORE", "e" * 60])
def test_only_layernorm_ignore_is_checked(tmp_path, layernorm):
    path, read = _read_meta(tmp_path, {**META, "layernorm": layernorm})
    with pytest.raises(ConformanceError, match=_exactly(
            f"only layernorm 'ignore' files can be checked, {path} says {_cut(layernorm, 40)}")):
        read()


@pytest.mark.parametrize("dtype", ["float16", "FLOAT32", None, "d" * 60])
def test_only_float32_and_float64_dtypes_are_checked(tmp_path, dtype):
    path, read = _read_meta(tmp_path, {**META, "dtype": dtype})
    with pytest.raises(ConformanceError, match=_exactly(
            f"{path}: __meta__ dtype must be 'float32' or 'float64', got {_cut(dtype, 40)}")):
        read()


def test_a_token_string_of_digits_after_a_letter_is_a_string(tmp_path, model):
    path, _ = _read_meta(tmp_path, {**META, "observables": {"a": {"X5": 1.0}}})
    with pytest.raises(ConformanceError, match=_exactly(
            f"{path}: observable 'a' of __meta__: 'X5' is not a single token: it encodes to 2 tokens [55, 20] = "
            "['X', '5']")):
        conformance.check_file(path, model)


def test_write_reference_writes_token_strings_as_ids_so_the_file_passes_against_itself(tmp_path, model):
    """A token string of digits ("5" is one token of this vocabulary, not id 5) must not be read back as an id."""
    token_id = refimpl.observable(model, {"5": 1.0}).terms[0][0]
    assert token_id != 5
    path = conformance.write_reference(tmp_path / "digits.npz", model, {"d": {"5": 2.0, 3: -1.0, "3": 0.5}})
    with np.load(path) as data:
        meta = json.loads(str(data["__meta__"]))
    assert meta["observables"] == {"d": {str(token_id): 2.0, "3": -1.0,
                                         str(refimpl.observable(model, {"3": 1.0}).terms[0][0]): 0.5}}
    checks = conformance.check_file(path, model)
    assert len(checks) == 2 * 2 * 2 and all(c.passed for c in checks)


def test_write_reference_adds_the_weights_of_a_token_given_both_as_a_string_and_as_its_id(tmp_path, model):
    """{5: 1, "&": 2} names id 5 twice (as observable() reads it, n[5] = 3): the file must say 3, not the last."""
    token = model.tokenizer.decode([5])
    assert refimpl.observable(model, {token: 1.0}).terms[0][0] == 5
    path = conformance.write_reference(tmp_path / "twice.npz", model, {"d": {5: 1.0, token: 2.0, 7: -1.0}})
    with np.load(path) as data:
        meta = json.loads(str(data["__meta__"]))
    assert meta["observables"] == {"d": {"5": 3.0, "7": -1.0}}
    assert np.array_equal(refimpl.observable(model, {5: 3.0, 7: -1.0}).vocab,
                          refimpl.observable(model, {5: 1.0, token: 2.0, 7: -1.0}).vocab)
