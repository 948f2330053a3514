"""Hypothesis strategies and profiles, exported for other implementations' tests.

Profiles: "default" (derandomized, CI) and "long" (random, many examples), selected with the
environment variable ``REFIMPL_HYPOTHESIS_PROFILE`` (``register_profiles()`` then ``load_profile()``).
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROFILE_VARIABLE = "REFIMPL_HYPOTHESIS_PROFILE"


def register_profiles() -> None:
    settings.register_profile("default", derandomize=True, max_examples=40, deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("long", derandomize=False, max_examples=1000, deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow])


def load_profile() -> str:
    """Load the profile named by REFIMPL_HYPOTHESIS_PROFILE (default: "default") and return its name."""
    register_profiles()
    name = os.environ.get(PROFILE_VARIABLE, "default")
    settings.load_profile(name)
    return name


finite = dict(allow_nan=False, allow_infinity=False)


@st.composite
def vectors(draw, d: int, scale: float = 10.0, min_norm: float = 1e-3):
    """A float64 vector of dimension d with entries in [-scale, scale] and norm >= min_norm."""
    values = draw(st.lists(st.floats(-scale, scale, **finite), min_size=d, max_size=d))
    v = np.array(values, dtype=np.float64)
    if np.linalg.norm(v) < min_norm:
        v[draw(st.integers(0, d - 1))] += min_norm * 10
    return v


@st.composite
def theorem2_cases(draw, min_d: int = 3, max_d: int = 16):
    """(y1, y2, s, k) with |k| <= s |y1| imposed by construction: k = fraction * s * |y1|. Includes the
    degenerate cases the paper's proof does not cover: y1 . y2 = 0 and k = 0."""
    d = draw(st.integers(min_d, max_d))
    y1 = draw(vectors(d, min_norm=0.1))
    y2 = draw(vectors(d, min_norm=0.1))
    if draw(st.booleans()):  # make y2 orthogonal to y1 (y1 . y2 = 0)
        y2 = y2 - (y2 @ y1) / (y1 @ y1) * y1
        if np.linalg.norm(y2) < 1e-6:
            y2 = np.roll(y1, 1) - (np.roll(y1, 1) @ y1) / (y1 @ y1) * y1 + 1e-3
            y2 = y2 - (y2 @ y1) / (y1 @ y1) * y1
    s = draw(st.floats(0.1, 10.0, **finite))
    fraction = draw(st.sampled_from([0.0]) | st.floats(-0.95, 0.95, **finite))
    return y1, y2, s, fraction * s * float(np.linalg.norm(y1))


@st.composite
def layer_norm_inputs(draw, min_d: int = 4, max_d: int = 24):
    """(x, w, n): a LayerNorm input whose centred part is not tiny (well conditioned), a gain and a
    cotangent."""
    d = draw(st.integers(min_d, max_d))
    x = draw(vectors(d, scale=5.0))
    x = x + np.linspace(-1.0, 1.0, d)  # keeps |Px| away from 0
    w = draw(vectors(d, scale=2.0, min_norm=0.5))
    n = draw(vectors(d, scale=5.0, min_norm=0.1))
    return x, w, n


@st.composite
def small_configs(draw):
    """A Hugging Face GPT-Neo config dict of a small model (odd head counts, mixed layer kinds)."""
    from verification.references.fixtures import gpt_neo_config

    n_heads = draw(st.integers(1, 4))
    d_head = draw(st.integers(1, 5))
    n_layers = draw(st.integers(1, 3))
    kinds = draw(st.lists(st.sampled_from(["global", "local"]), min_size=n_layers, max_size=n_layers))
    return gpt_neo_config(vocab=draw(st.integers(5, 40)), d_model=n_heads * max(d_head, 2),
                          n_layers=n_layers, n_heads=n_heads, window=draw(st.integers(1, 6)), n_ctx=24,
                          d_mlp=draw(st.sampled_from([None, 7, 16])), kinds=kinds)


@st.composite
def observables_specs(draw, vocab: int, max_terms: int = 4):
    """{token id: weight} specs with at least one non-zero weight."""
    ids = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=max_terms, unique=True))
    weights = draw(st.lists(st.floats(-3, 3, **finite).filter(lambda w: abs(w) > 1e-3), min_size=len(ids),
                            max_size=len(ids)))
    return dict(zip(ids, weights))


# --- hostile-file fuzzing: mutations of valid files (tests/test_hostile_files.py) ---

@st.composite
def mutated_bytes(draw, data: bytes, focus: int | None = None, max_edits: int = 4):
    """``data`` after 1..max_edits edits: bit flips, byte overwrites, truncation, insertion, deletion.
    With ``focus``, three edits in four land in the first ``focus`` bytes (e.g. a header)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_edits))):
        if not out:
            out = bytearray(draw(st.binary(max_size=16)))
            continue
        span = min(focus, len(out)) if focus and draw(st.integers(0, 3)) else len(out)
        pos = draw(st.integers(0, span - 1))
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if kind == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            out[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del out[pos:pos + draw(st.integers(1, 8))]
    return bytes(out)


def json_values(max_leaves: int = 6):
    """Arbitrary JSON values with hostile leaves: 0, negatives, 2**63, 1e30, NaN, Inf, bools, strings."""
    leaves = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
              | st.sampled_from([0, -1, 1, 2, 2**31, 2**63, 10**30, 1e-300, "global", "local", "gelu_new"])
              | st.text(max_size=12))
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=max_leaves)


@st.composite
def mutated_json(draw, value, max_edits: int = 3):
    """A deep copy of the JSON ``value`` with 1..max_edits structural edits at random places: a value
    replaced by an arbitrary JSON value, a key or item deleted, or a key added."""
    import copy

    value = copy.deepcopy(value)
    for _ in range(draw(st.integers(1, max_edits))):
        paths: list[tuple] = []

        def walk(node, path):
            paths.append(path)
            items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
            for key, child in items:
                walk(child, path + (key,))

        walk(value, ())
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            if kind == "replace":
                value = draw(json_values())
            elif isinstance(value, dict):
                value[draw(st.text(max_size=8))] = draw(json_values())
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        if kind == "replace":
            parent[path[-1]] = draw(json_values())
        elif kind == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values())
        else:
            parent.insert(path[-1], draw(json_values()))
    return value
