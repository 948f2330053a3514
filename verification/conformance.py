"""Conformance API: check another implementation's feature vectors, norms, cosines and couplings
against the oracle.

File format (``.npz``, written e.g. with ``numpy.savez``):

* ``__meta__``: a JSON string ``{"observables": {name: {token string or id: weight}}, "layernorm":
  "ignore", "dtype": "float32"}`` (``layernorm``: only "ignore" is checked; ``dtype``: the precision the
  implementation computed in, which picks the tolerance);
* ``feature/{name}/{layer}.{head}``: the head's feature vector [d_model] (W_OV^T W_U^T n, row layout);
* ``norm/{name}/{layer}.{head}``: its norm (scalar);
* ``cosine/{name1}->{name2}/{layer}.{head}`` and ``coupling/{name1}->{name2}/{layer}.{head}``: scalars,
  coupling = y1.y2/|y1|^2.

Any subset of keys may be present. Every mismatch comes with a snippet that reproduces the expected value.

Reading is defensive: each member's ``.npy`` header is read first and a member larger than the format
allows (``[d_model]`` for a feature, ``()`` for a scalar), an object (pickled) member, a file that is not
a zip, a truncated zip or a malformed ``__meta__`` raises ``ConformanceError``; a well-formed member with
an unknown key, a non-numeric dtype, the wrong shape or a layer/head/observable that does not exist
becomes a failed ``Check`` whose ``measured`` is ``inf`` (always a float) and whose ``detail`` says why.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

import refimpl
from refimpl.errors import ConformanceError, RefimplError
from refimpl.sources.safetensors_reader import open_regular, short, strict_json

from verification.policy.checks import Check
from verification.policy.tolerances import tolerance

VANISHING = 1e-6  # a head whose feature norm is below this share of the largest head's is judged against that
KEY = re.compile(r"^(feature|norm|cosine|coupling)/([^/]+)/(\d+)\.(\d+)$")
META_KEYS = ("observables", "layernorm", "dtype")
MAX_META_CHARS = 1 << 20
MAX_MEMBERS = 1 << 20
NUMERIC_KINDS = "fiu"


def write_reference(path: str | Path, model, observables: dict, dtype: str | None = None) -> Path:
    """Write the oracle's own values for ``observables`` ({name: spec}) in the conformance format."""
    features = {name: refimpl.head_features(model, refimpl.observable(model, spec)) for name, spec in observables.items()}
    arrays = {"__meta__": np.array(json.dumps({"observables": {n: _spec_to_json(model, s) for n, s in observables.items()},
                                               "layernorm": "ignore", "dtype": dtype or str(model.dtype)}))}
    names = list(features)
    L, H, _ = next(iter(features.values())).shape
    for l in range(L):
        for h in range(H):
            for name in names:
                arrays[f"feature/{name}/{l}.{h}"] = features[name][l, h]
                arrays[f"norm/{name}/{l}.{h}"] = np.linalg.norm(features[name][l, h])
            for a in names:
                for b in names:
                    if a != b:
                        arrays[f"cosine/{a}->{b}/{l}.{h}"] = refimpl.cosine(features[a][l, h], features[b][l, h])
                        arrays[f"coupling/{a}->{b}/{l}.{h}"] = refimpl.coupling(features[a][l, h], features[b][l, h])
    path = Path(path)
    np.savez(path, **arrays)
    return path


def _spec_to_json(model, spec: dict) -> dict:
    """{token string or id: weight} -> {"token id": weight}: JSON keys are strings and a key of digits is read
    back as an id (``_spec_from_json``), so a token string such as "5" is written as its id."""
    out: dict[str, float] = {}
    for token, weight in spec.items():
        key = str(refimpl.observable(model, {token: 1.0}).terms[0][0])
        out[key] = out.get(key, 0.0) + weight
    return out


def _spec_from_json(spec: dict) -> dict:
    return {int(k) if k.lstrip("-").isdigit() else k: v for k, v in spec.items()}


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, max_elements: int, max_dim: int):
    """The array of one ``.npy`` member, after checking its header: dtype, shape and size within bounds.

    A non-numeric (e.g. string) member is returned as its dtype name (a str) without reading its data.
    """
    where = f"member {short(key, 80)}"
    with zf.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ConformanceError(f"{where} has .npy format version {version}; only 1.0 and 2.0 are read")
        if dtype.hasobject:
            raise ConformanceError(f"{where} holds Python objects (a pickle); refused, never unpickled")
        count = math.prod(shape)
        if count > max_elements or dtype.itemsize > (4 * MAX_META_CHARS if key == "__meta__" else 16) or \
                any(s > max_dim for s in shape):
            raise ConformanceError(f"{where} has shape {short(shape)} of {dtype} ({count * dtype.itemsize} bytes); "
                                   f"the format allows at most {max_elements} element(s), {max_dim} per dimension")
        if key != "__meta__" and dtype.kind not in NUMERIC_KINDS:
            return str(dtype)
        nbytes = count * dtype.itemsize
        buf = member.read(nbytes)
        if len(buf) != nbytes:
            raise ConformanceError(f"{where} is truncated: {len(buf)} of {nbytes} data bytes")
    return np.frombuffer(buf, dtype).reshape(shape, order="F" if fortran else "C")


def read_conformance_file(path: str | Path, d_model: int) -> tuple[dict, dict]:
    """``(meta, members)`` of a conformance file; members map key -> array (or dtype name if not numeric).

    Nothing larger than the format allows for a model of width ``d_model`` is ever allocated.
    """
    path = Path(path)
    try:
        with open_regular(path, None, ConformanceError) as fh, zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise ConformanceError(f"{path} holds {len(infos)} members, more than {MAX_MEMBERS}")
            members: dict = {}
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise ConformanceError(f"{path}: member {short(info.filename, 80)} is not a .npy array")
                key = info.filename[:-4]
                if key in members:
                    raise ConformanceError(f"{path}: member {short(key, 80)} appears twice")
                elements = 1 if key == "__meta__" else d_model if key.startswith("feature/") else 1
                members[key] = _read_member(zf, info, key, elements, max(d_model, 1))
    except ConformanceError as exc:
        raise ConformanceError(f"{path}: {exc}" if not str(exc).startswith(str(path)) else str(exc)) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError,
            NotImplementedError, RuntimeError, KeyError) as exc:
        raise ConformanceError(f"{path} is not a readable conformance .npz (zip of .npy arrays): "
                               f"{type(exc).__name__}: {short(str(exc), 160)}") from None
    if "__meta__" not in members:
        raise ConformanceError(f"{path} has no __meta__ entry (see verification.conformance for the format)")
    meta_array = members.pop("__meta__")
    if meta_array.dtype.kind != "U" or meta_array.shape != ():
        raise ConformanceError(f"{path}: __meta__ must be a JSON string (a 0-d str array), got {meta_array.dtype} "
                               f"of shape {meta_array.shape}")
    meta = strict_json(str(meta_array[()]), f"{path}: __meta__", ConformanceError)
    if not isinstance(meta, dict):
        raise ConformanceError(f"{path}: __meta__ must be a JSON object, got {type(meta).__name__}")
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise ConformanceError(f"{path}: __meta__ has unknown keys {[k[:40] for k in unknown[:5]]}; "
                               f"known: {list(META_KEYS)}")
    observables = meta.get("observables")
    if not isinstance(observables, dict) or not observables:
        raise ConformanceError(f"{path}: __meta__ 'observables' must be a non-empty mapping of name -> "
                               f"{{token: weight}}, got {short(observables, 80)}")
    for name, spec in observables.items():
        if not name or "/" in name or "->" in name:
            raise ConformanceError(f"{path}: observable name {short(name, 40)} is empty or holds '/' or '->'")
        if not isinstance(spec, dict) or not spec or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in spec.values()):
            raise ConformanceError(f"{path}: observable {short(name, 40)} must map tokens to finite numbers, "
                                   f"got {short(spec, 80)}")
    if meta.get("layernorm", "ignore") != "ignore":
        raise ConformanceError(f"only layernorm 'ignore' files can be checked, {path} says "
                               f"{short(meta.get('layernorm'), 40)}")
    if meta.get("dtype", "float32") not in ("float32", "float64"):
        raise ConformanceError(f"{path}: __meta__ dtype must be 'float32' or 'float64', got "
                               f"{short(meta.get('dtype'), 40)}")
    return meta, members


def _failed(key: str, tol: float, why: str) -> Check:
    """A failed check: ``measured`` is inf (a float, so reports can format it) and ``detail`` says why."""
    return Check(f"conformance {key}", False, float("inf"), 0.0, tol, group="conformance", detail=why)


def check_file(path: str | Path, model, model_source: str | None = None) -> list[Check]:
    """Compare every entry of a conformance file with the oracle (in float64) under the tolerance table.

    A malformed file raises ``ConformanceError``; a bad entry is a failed check (see the module docstring).
    """
    cfg = model.config
    meta, data = read_conformance_file(path, cfg.d_model)
    dtype = meta.get("dtype", "float32")
    tol = tolerance("conformance", dtype)
    specs = {name: _spec_from_json(spec) for name, spec in meta["observables"].items()}
    oracle = refimpl.load(model.path, dtype="float64") if model.dtype != np.float64 else model
    features = {}
    for name, spec in specs.items():
        try:
            features[name] = refimpl.head_features(oracle, refimpl.observable(oracle, spec))
        except RefimplError as exc:
            raise ConformanceError(f"{path}: observable {name!r} of __meta__: {exc}") from None
    largest = {name: float(np.linalg.norm(f, axis=-1).max()) for name, f in features.items()}
    source = model_source if model_source is not None else (model.source or str(model.path))
    checks = []
    for key in sorted(data):
        match = KEY.match(key)
        if not match:
            checks.append(_failed(key, tol, "unknown key; keys look like feature/NAME/L.H, norm/NAME/L.H, "
                                            "cosine/A->B/L.H, coupling/A->B/L.H"))
            continue
        quantity, names, l, h = match.group(1), match.group(2), int(match.group(3)), int(match.group(4))
        involved = names.split("->") if quantity in ("cosine", "coupling") else [names]
        if len(involved) != (2 if quantity in ("cosine", "coupling") else 1) or \
                any(n not in features for n in involved):
            checks.append(_failed(key, tol, f"observable(s) {involved} not all in __meta__ observables "
                                            f"{sorted(features)}"))
            continue
        if l >= cfg.n_layers or h >= cfg.n_heads:
            checks.append(_failed(key, tol, f"no head {l}.{h}: the model has {cfg.n_layers} layers of "
                                            f"{cfg.n_heads} heads"))
            continue
        if isinstance(data[key], str):
            checks.append(_failed(key, tol, f"values of dtype {data[key]}, not numbers"))
            continue
        got = np.asarray(data[key], dtype=np.float64)
        if quantity in ("feature", "norm"):
            y = features[names][l, h]
            expected = y if quantity == "feature" else np.linalg.norm(y)
            # relative to this head's own feature norm (a 5% error on one head reads as 5e-2), floored
            # for heads whose feature all but vanishes, where a relative error means nothing
            reference_scale = max(float(np.linalg.norm(y)), VANISHING * largest[names])
            code = f"refimpl.head_features(m, refimpl.observable(m, {specs[names]!r}))[{l}, {h}]"
            if quantity == "norm":
                code = f"np.linalg.norm({code})"
        else:
            a, b = involved
            fn = refimpl.cosine if quantity == "cosine" else refimpl.coupling
            expected = fn(features[a][l, h], features[b][l, h])
            reference_scale = max(1.0, abs(float(expected)))
            code = (f"refimpl.{quantity}(refimpl.head_features(m, refimpl.observable(m, {specs[a]!r}))[{l}, {h}], "
                    f"refimpl.head_features(m, refimpl.observable(m, {specs[b]!r}))[{l}, {h}])")
        if got.shape != np.shape(expected):
            checks.append(_failed(key, tol, f"shape {got.shape}, expected shape {np.shape(expected)}"))
            continue
        difference = float(np.linalg.norm(np.ravel(got - expected)))  # |got - expected|, Euclidean for a feature
        error = difference / reference_scale if reference_scale else difference
        if not math.isfinite(error):
            error = float("inf")
        snippet = ""
        if error > tol:
            snippet = (f"import numpy as np, refimpl\nm = refimpl.load({source!r}, dtype='float64')\n"
                       f"expected = {code}\n# got {np.array2string(got, precision=8, threshold=8)}; "
                       f"relative error {error:.3e} > tolerance {tol:g} ({dtype})")
        checks.append(Check(f"conformance {key}", error <= tol, error, 0.0, tol, group="conformance", detail=snippet))
    return checks
