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
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

import refimpl

from .checks import Check
from .tolerances import tolerance

KEY = re.compile(r"^(feature|norm|cosine|coupling)/([^/]+)/(\d+)\.(\d+)$")


def write_reference(path: str | Path, model, observables: dict, dtype: str | None = None) -> Path:
    """Write the oracle's own values for ``observables`` ({name: spec}) in the conformance format."""
    features = {name: refimpl.head_features(model, refimpl.observable(model, spec)) for name, spec in observables.items()}
    arrays = {"__meta__": np.array(json.dumps({"observables": {n: {str(k): v for k, v in s.items()}
                                                               for n, s in observables.items()},
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


def _spec_from_json(spec: dict) -> dict:
    return {int(k) if k.lstrip("-").isdigit() else k: v for k, v in spec.items()}


def check_file(path: str | Path, model, model_source: str | None = None) -> list[Check]:
    """Compare every entry of a conformance file with the oracle (in float64) under the tolerance table."""
    data = np.load(path, allow_pickle=False)
    if "__meta__" not in data:
        raise ValueError(f"{path} has no __meta__ entry (see verification.conformance for the format)")
    meta = json.loads(str(data["__meta__"]))
    if meta.get("layernorm", "ignore") != "ignore":
        raise ValueError(f"only layernorm 'ignore' files can be checked, {path} says {meta.get('layernorm')!r}")
    dtype = meta.get("dtype", "float32")
    tol = tolerance("conformance", dtype)
    specs = {name: _spec_from_json(spec) for name, spec in meta["observables"].items()}
    oracle = refimpl.load(model.path, dtype="float64") if model.dtype != np.float64 else model
    features = {name: refimpl.head_features(oracle, refimpl.observable(oracle, spec)) for name, spec in specs.items()}
    scale = {name: float(np.abs(f).max()) for name, f in features.items()}
    source = model_source if model_source is not None else (model.source or str(model.path))
    checks = []
    for key in sorted(k for k in data.files if k != "__meta__"):
        match = KEY.match(key)
        if not match:
            checks.append(Check(f"conformance {key}", False, "unknown key", "", tol, group="conformance",
                                detail="keys look like feature/NAME/L.H, norm/NAME/L.H, cosine/A->B/L.H"))
            continue
        quantity, names, l, h = match.group(1), match.group(2), int(match.group(3)), int(match.group(4))
        got = np.asarray(data[key], dtype=np.float64)
        if quantity in ("feature", "norm"):
            y = features[names][l, h]
            expected = y if quantity == "feature" else np.linalg.norm(y)
            reference_scale = scale[names]
            code = f"refimpl.head_features(m, refimpl.observable(m, {specs[names]!r}))[{l}, {h}]"
            if quantity == "norm":
                code = f"np.linalg.norm({code})"
        else:
            a, b = names.split("->")
            fn = refimpl.cosine if quantity == "cosine" else refimpl.coupling
            expected = fn(features[a][l, h], features[b][l, h])
            reference_scale = max(1.0, abs(float(expected)))
            code = (f"refimpl.{quantity}(refimpl.head_features(m, refimpl.observable(m, {specs[a]!r}))[{l}, {h}], "
                    f"refimpl.head_features(m, refimpl.observable(m, {specs[b]!r}))[{l}, {h}])")
        if got.shape != np.shape(expected):
            checks.append(Check(f"conformance {key}", False, f"shape {got.shape}", f"shape {np.shape(expected)}", tol,
                                group="conformance"))
            continue
        error = float(np.max(np.abs(got - expected))) / reference_scale
        snippet = ""
        if error > tol:
            snippet = (f"import numpy as np, refimpl\nm = refimpl.load({source!r}, dtype='float64')\n"
                       f"expected = {code}\n# got {np.array2string(got, precision=8, threshold=8)}; "
                       f"relative error {error:.3e} > tolerance {tol:g} ({dtype})")
        checks.append(Check(f"conformance {key}", error <= tol, error, 0.0, tol, group="conformance", detail=snippet))
    return checks
