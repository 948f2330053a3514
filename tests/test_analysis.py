"""Data-free analysis: couplings and cosines, Theorem 2's formulas, SVD of W_OV, lens, records."""

import json

import numpy as np
import pytest

import refimpl
from verification.references.fixtures import FAMILIES
from refimpl import InputError
from verification.policy.tolerances import relative_error, tolerance

SAME = tolerance("identity", "float64")
rng = np.random.default_rng(0)


def test_coupling_identities():
    y1, y2 = rng.normal(size=(5, 7, 32)), rng.normal(size=(5, 7, 32))
    c12, c21, cos = refimpl.coupling(y1, y2), refimpl.coupling(y2, y1), refimpl.cosine(y1, y2)
    assert c12.shape == (5, 7)
    assert relative_error(c12 * c21, cos**2) <= SAME  # erratum: the paper's text says cos, not cos^2
    assert relative_error(c12, (y1 * y2).sum(-1) / (y1 * y1).sum(-1)) <= SAME
    assert relative_error(refimpl.coupling(y1, 3 * y1), np.full((5, 7), 3.0)) <= SAME


def test_theorem2_formulas_match_an_explicit_maximiser():
    d, s, k = 12, 2.0, 0.7
    y1, y2 = rng.normal(size=d), rng.normal(size=d)
    lo, hi = refimpl.theorem2_bounds(y1, y2, s, k)
    # explicit extremiser: x = k y1/|y1|^2 +- r e, e the unit part of y2 orthogonal to y1
    r = np.sqrt(s**2 - k**2 / (y1 @ y1))
    e = y2 - (y2 @ y1) / (y1 @ y1) * y1
    e /= np.linalg.norm(e)
    for x, bound in ((k * y1 / (y1 @ y1) + r * e, hi), (k * y1 / (y1 @ y1) - r * e, lo)):
        assert abs(np.linalg.norm(x) - s) <= SAME * s and abs(x @ y1 - k) <= SAME
        assert abs(x @ y2 - bound) <= SAME * abs(bound)
    assert abs(refimpl.theorem2_expectation(y1, y2, k) - 0.5 * (lo + hi)) <= SAME
    with pytest.raises(InputError, match="need"):
        refimpl.theorem2_bounds(y1, y2, 0.01, k)


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tmp_path_factory):
    from verification.references.fixtures import family_config, random_tensors, write_checkpoint

    config = family_config(request.param, vocab=61, d_model=16, n_layers=2, n_heads=2)
    folder = write_checkpoint(tmp_path_factory.mktemp("an"), config, random_tensors(config, seed=6), dtype="float64")
    return refimpl.load(folder, dtype="float64")


def test_ov_svd_matches_dense(model):
    S, inputs, outputs = refimpl.ov_svd(model, 1, 0)
    W_OV_row = model.weights["blocks.1.attn.W_V"][0] @ model.weights["blocks.1.attn.W_O"][0]  # [d, d]
    U, S_dense, Vt = np.linalg.svd(W_OV_row)
    assert relative_error(S, S_dense[:8]) <= SAME
    assert relative_error(inputs @ inputs.T, np.eye(8)) <= SAME
    # inputs are the left singular vectors of the row-form matrix (right ones of the paper's W_OV)
    assert relative_error(np.abs(inputs @ U[:, :8]), np.eye(8)) <= tolerance("singular_vectors", "float64")
    assert relative_error(inputs.T @ np.diag(S) @ outputs, W_OV_row) <= SAME


def test_svd_alignment_finds_the_planted_direction(model):
    _, inputs, _ = refimpl.ov_svd(model, 0, 1)
    table = refimpl.svd_alignment(model, 0, 1, -3.0 * inputs[2] + 1e-3 * inputs[5], k=3)
    assert table[0]["index"] == 2 and table[0]["cosine"] < -0.99 and table[1]["index"] == 5


def test_vector_lens(model):
    v = model.weights["unembed.W_U"][:, 17] * 10
    table = refimpl.vector_lens(model, v, k=3)
    top = [r for r in table if r["end"] == "top"]
    assert top[0]["id"] == np.argmax(v @ model.weights["unembed.W_U"])
    bottom = [r for r in table if r["end"] == "bottom"]
    assert bottom[0]["logit"] == min(v @ model.weights["unembed.W_U"])
    assert len(refimpl.vector_lens(model, v, k=2, apply_ln_final=True)) == 4


def test_records_convert(model, tmp_path):
    obs = refimpl.observable(model, {1: 1, 2: -1})
    norms = refimpl.feature_norms(refimpl.head_features(model, obs))
    table = refimpl.head_table(norms, "norm")
    assert table.column("label")[0] == "{}.{}".format(*np.unravel_index(np.argmax(norms), norms.shape))
    table.to_csv(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == "label,layer,head,norm"
    rows = json.loads(table.to_json(tmp_path / "t.json"))
    assert rows[0]["norm"] == pytest.approx(norms.max())
    assert table.to_markdown().startswith("| label | layer | head | norm |")
    compare = refimpl.compare_features(refimpl.head_features(model, obs), refimpl.head_features(model, obs))
    assert all(abs(r["cosine"] - 1) <= SAME and abs(r["coupling_1_to_2"] - 1) <= SAME for r in compare)
