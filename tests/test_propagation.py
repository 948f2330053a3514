"""Feature vectors of heads, virtual heads and paths, checked against direct formulas and against the
oracle's own forward pass with everything off the path frozen (verification.references.linearized)."""

import numpy as np
import pytest

import refimpl
from refimpl import InputError
from refimpl.propagation import jacobians as J
from verification.references.fixtures import FAMILIES, family_config, random_tensors, write_checkpoint
from verification.references.linearized import attention_weight, complex_twin, frozen_observable
from verification.policy.tolerances import relative_error, tolerance

SAME, FROZEN = tolerance("identity", "float64"), tolerance("frozen_path", "float64")
IDS = np.array([3, 1, 4, 1, 5, 9, 2, 6])


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tmp_path_factory):
    config = family_config(request.param, vocab=61, d_model=16, n_layers=3, n_heads=2, window=4, d_mlp=24)
    folder = write_checkpoint(tmp_path_factory.mktemp("prop"), config, random_tensors(config, seed=2), dtype="float64")
    return refimpl.load(folder, dtype="float64")


@pytest.fixture(scope="module")
def obs(model):
    return refimpl.observable(model, {5: 1, 7: -1})


def test_head_features_equal_dense_ov(model, obs):
    F = refimpl.head_features(model, obs)
    assert F.shape == (3, 2, 16)
    for l in range(3):
        for h in range(2):
            W_OV = model.weights[f"blocks.{l}.attn.W_V"][h] @ model.weights[f"blocks.{l}.attn.W_O"][h]  # row form
            assert relative_error(F[l, h], W_OV @ obs.residual) <= SAME


def test_features_equal_frozen_linear_effect(model, obs):
    """delta . y equals the change of n . logits when only that head reads the perturbed input."""
    F = refimpl.head_features(model, obs)
    delta = np.random.default_rng(0).normal(size=16)
    base = frozen_observable(model, IDS, obs, live=set())
    for l, h in [(0, 0), (1, 1), (2, 0)]:
        effect = frozen_observable(model, IDS, obs, live=set(), source=(l, h), delta=delta) - base
        predicted = attention_weight(model, IDS, l, h) * delta @ F[l, h]
        assert abs(effect - predicted) <= SAME * abs(predicted)


def test_virtual_head_equals_frozen_difference(model, obs):
    y = refimpl.path_feature(model, obs, ["0.1", "2.0"])
    delta = np.random.default_rng(1).normal(size=16)

    def effect(live):
        return (frozen_observable(model, IDS, obs, live, source=(0, 1), delta=delta)
                - frozen_observable(model, IDS, obs, live))

    virtual = effect({(2, 0)}) - effect(set())
    predicted = attention_weight(model, IDS, 0, 1) * attention_weight(model, IDS, 2, 0) * delta @ y
    # ``virtual`` is a difference of four runs' observables: it is known to rounding of their size, not its own
    runs = abs(frozen_observable(model, IDS, obs, {(2, 0)}))
    assert abs(virtual - predicted) <= SAME * max(abs(predicted), runs)
    assert abs(predicted) > 1e-6 * runs  # the effect is far above that rounding


def test_exact_layer_norms_equal_the_derivative(model, obs):
    """Exact mode, LayerNorm Jacobians at the run's own activations = d(n . logits)/d(delta) with real LNs,
    by complex step through the model's complex twin: Im f(delta = i h u) / h, exact to rounding."""
    points = refimpl.ln_input_points(model, IDS)  # every LayerNorm's input at the last position
    y = refimpl.path_feature(model, obs, ["1.1"], layernorm="exact", points=points)
    twin = complex_twin(model)
    rng = np.random.default_rng(2)
    weight = attention_weight(model, IDS, 1, 1)
    for _ in range(3):
        direction = rng.normal(size=16)
        h = 1e-20
        derivative = frozen_observable(twin, IDS, obs, set(), (1, 1), 1j * h * direction, layer_norms="live").imag / h
        assert abs(derivative - weight * direction @ y) <= FROZEN * np.linalg.norm(weight * y) * np.linalg.norm(direction)


def test_estimate_mode(model, obs):
    norms = refimpl.ln_input_norms(model, IDS[None])
    d = 16
    F0 = refimpl.head_features(model, obs)
    u = np.sqrt(d) * model.weights["ln_final.w"] * obs.residual / norms["ln_final"]
    F = refimpl.head_features(model, obs, layernorm="estimate", norms=norms)
    W = model.weights
    expected = np.sqrt(d) * W["blocks.1.ln1.w"] * (W["blocks.1.attn.W_V"][0] @ (W["blocks.1.attn.W_O"][0] @ u))
    assert relative_error(F[1, 0], expected) <= SAME
    # only the last (earliest) node skips 1/|x~|
    y = refimpl.path_feature(model, obs, ["0.1", "2.0"], layernorm="estimate", norms=norms)
    y2 = np.sqrt(d) * W["blocks.2.ln1.w"] * (W["blocks.2.attn.W_V"][0] @ (W["blocks.2.attn.W_O"][0] @ u)) / norms["blocks.2.ln1"]
    y1 = np.sqrt(d) * W["blocks.0.ln1.w"] * (W["blocks.0.attn.W_V"][1] @ (W["blocks.0.attn.W_O"][1] @ y2))
    assert relative_error(y, y1) <= SAME
    assert np.linalg.norm(F0[1, 0]) > 0
    with pytest.raises(InputError, match="'estimate' needs the input norm .* of ln_final"):
        refimpl.head_features(model, obs, layernorm="estimate")
    with pytest.raises(InputError, match="'exact' needs the input activation of ln_final"):
        refimpl.path_feature(model, obs, ["1.0"], layernorm="exact")
    with pytest.raises(InputError, match="layernorm must be one of"):
        refimpl.head_features(model, obs, layernorm="fold")


def _mlp_inputs(model, layer):
    _, trace = model.run_with_trace(np.stack([IDS, IDS[::-1]]), names=[f"blocks.{layer}.ln2.hook_normalized"])
    return trace[f"blocks.{layer}.ln2.hook_normalized"][:, -1]


def test_mlp_node_uses_the_boundary_gradient(model, obs):
    a, b = _mlp_inputs(model, 1)
    u = obs.residual
    W = model.weights
    args = (W["blocks.1.mlp.W_in"], W["blocks.1.mlp.b_in"], W["blocks.1.mlp.W_out"], W["blocks.1.mlp.b_out"])
    g = lambda x: u @ J.mlp(x, *args)  # noqa: E731
    pairs = [(a, b), (b, a), (a, -a), (-a, a), (b, -b), (-b, b)]
    x_neg, x_pos = next(p for p in pairs if g(p[0]) < 0 < g(p[1]))
    result = refimpl.propagate(model, obs, ["MLP1"], mlp_points={1: (x_neg, x_pos)})
    boundary = refimpl.mlp_boundary(model, 1, u, x_neg, x_pos)
    assert abs(g(boundary.point)) <= SAME * np.abs(u).sum() * 10
    assert 0 <= result.steps[-1].boundary_t <= 1
    assert relative_error(result.vector, J.mlp_vjp(boundary.point, *args[:3], u)) <= SAME


def test_mlp_boundary_without_sign_change(model, obs):
    a, _ = _mlp_inputs(model, 1)
    with pytest.raises(InputError, match="no sign change"):
        refimpl.path_feature(model, obs, ["MLP1"], mlp_points={1: (a, a * 1.0001)})
    vec = refimpl.path_feature(model, obs, ["MLP1"], mlp_points={1: (a, a * 1.5)}, mlp_fallback="mean")
    assert np.all(np.isfinite(vec))
    with pytest.raises(InputError, match=r"MLP node MLP1 needs mlp_points\[1\]"):
        refimpl.path_feature(model, obs, ["MLP1"])


def test_final_ln_boundary(model, obs):
    _, trace = model.run_with_trace(np.stack([IDS, IDS[::-1]]), names=["blocks.2.hook_resid_post"])
    x = trace["blocks.2.hook_resid_post"][:, -1]
    w, b = model.weights["ln_final.w"], model.weights["ln_final.b"]
    from refimpl.oracle import ops
    score = lambda v: obs.residual @ ops.layer_norm(v, w, b, 1e-5)[0]  # noqa: E731
    x_neg, x_pos = (x[0], x[1]) if score(x[0]) < score(x[1]) else (x[1], x[0])
    try:
        boundary = refimpl.final_ln_boundary(model, obs, x_neg, x_pos)
    except InputError:
        boundary = refimpl.final_ln_boundary(model, obs, x_neg, x_pos, fallback="mean")
    assert abs(score(boundary.point) - boundary.target) <= tolerance("root_finding", "float64") * (
        abs(boundary.f_neg) + abs(boundary.f_pos))


@pytest.mark.parametrize("path, message", [
    (["2.0", "1.0"], "not in increasing layer order"),
    (["1.0", "1.1"], "not in increasing layer order"),
    (["MLP1", "1.0"], "not in increasing layer order"),
    (["3.0"], r"names layer 3, but the model has layers 0..2"),
    (["1.2"], r"names head 2, but layers have heads 0..1"),
    (["one.two"], "cannot read path node"),
    ([], "at least one node"),
])
def test_bad_paths(model, obs, path, message):
    with pytest.raises(InputError, match=message):
        refimpl.path_feature(model, obs, path)


def test_path_forms(model, obs):
    a = refimpl.path_feature(model, obs, ["0.1", "2.0"])
    b = refimpl.path_feature(model, obs, [(0, 1), (2, 0)])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(refimpl.path_feature(model, obs, "1.1"), refimpl.head_features(model, obs)[1, 1])


def test_scan_equals_brute_force(model, obs):
    norms = refimpl.virtual_head_norms(model, obs)
    for l1 in range(3):
        for h1 in range(2):
            for l2 in range(3):
                for h2 in range(2):
                    if l1 < l2:
                        brute = np.linalg.norm(refimpl.path_feature(model, obs, [(l1, h1), (l2, h2)]))
                        assert abs(norms[l1, h1, l2, h2] - brute) <= SAME * brute
                    else:
                        assert np.isnan(norms[l1, h1, l2, h2])
    table = refimpl.scan_virtual_heads(model, obs, top_k=4)
    assert len(table) == 4 and table.column("norm") == sorted(table.column("norm"), reverse=True)
    assert table[0]["norm"] == np.nanmax(norms)


def test_scan_estimate_mode_equals_paths(model, obs):
    lnorms = refimpl.ln_input_norms(model, IDS[None])
    norms = refimpl.virtual_head_norms(model, obs, layernorm="estimate", norms=lnorms)
    brute = np.linalg.norm(refimpl.path_feature(model, obs, ["0.1", "1.0"], layernorm="estimate", norms=lnorms))
    assert abs(norms[0, 1, 1, 0] - brute) <= SAME * brute


def test_beam_search(model, obs):
    table = refimpl.beam_search_paths(model, obs, max_length=2, beam_width=50, top_k=50)
    for row in table:
        nodes = row["path"].split(" -> ")
        assert abs(np.linalg.norm(refimpl.path_feature(model, obs, nodes)) - row["norm"]) <= SAME * row["norm"]
    assert {r["length"] for r in table} == {1, 2}
    single = refimpl.beam_search_paths(model, obs, max_length=1, top_k=6)
    head_norms = np.sort(refimpl.feature_norms(refimpl.head_features(model, obs)).ravel())[::-1]
    np.testing.assert_allclose(single.column("norm"), head_norms, rtol=SAME)
    a, b = _mlp_inputs(model, 1)
    with_mlp = refimpl.beam_search_paths(model, obs, max_length=2, beam_width=50, top_k=100,
                                         mlp_points={1: (a, -a)}, mlp_fallback="mean")
    assert any("MLP1" in r["path"] for r in with_mlp)
