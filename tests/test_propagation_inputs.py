"""Propagation's refusals with their exact messages (mutants of the checks survived tests that matched only a
prefix, or never reached the check)."""

import numpy as np
import pytest

import refimpl
from refimpl import InputError
from verification.references.fixtures import exactly as _exactly, small_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return small_model(tmp_path_factory.mktemp("propin"))


@pytest.fixture(scope="module")
def obs(model):
    return refimpl.observable(model, {5: 1, 7: -1})


@pytest.mark.parametrize("fallback", ["median", "MEAN", 0, ""])
def test_final_ln_boundary_refuses_an_unknown_fallback_first(model, obs, fallback):
    x = np.ones(16)
    with pytest.raises(InputError, match=_exactly(f"fallback must be None or 'mean', got {fallback!r}")):
        refimpl.final_ln_boundary(model, obs, x, -x, fallback=fallback)
    with pytest.raises(InputError, match=_exactly(f"fallback must be None or 'mean', got {fallback!r}")):
        refimpl.final_ln_boundary(model, {5: 1}, x, -x, fallback=fallback)  # before the observable is looked at


MODES = "['ignore', 'estimate', 'exact']"


@pytest.mark.parametrize("option", ["layernorm", "final_ln"])
def test_propagate_names_the_mode_option_it_refuses(model, obs, option):
    with pytest.raises(InputError, match=_exactly(f"{option} must be one of {MODES}, got 'fold'")):
        refimpl.propagate(model, obs, ["1.0"], **{option: "fold"})


def test_final_ln_given_apart_from_layernorm_is_used(model, obs):
    """final_ln="estimate" with layernorm="ignore": only ln_final is estimated."""
    d, w = 16, model.weights["ln_final.w"]
    result = refimpl.propagate(model, obs, ["2.1"], "ignore", final_ln="estimate", norms={"ln_final": 2.0})
    u = np.sqrt(d) * w * obs.residual / 2.0
    W_OV = model.weights["blocks.2.attn.W_V"][1] @ model.weights["blocks.2.attn.W_O"][1]
    np.testing.assert_allclose(result.vector, W_OV @ u, rtol=1e-12, atol=0)
    plain = refimpl.propagate(model, obs, ["2.1"], "ignore")
    assert not np.allclose(plain.vector, result.vector)


def test_steps_name_each_node_with_its_norm(model, obs):
    result = refimpl.propagate(model, obs, ["0.1", "2.0"])
    W = model.weights
    u = obs.residual
    after_20 = (W["blocks.2.attn.W_V"][0] @ W["blocks.2.attn.W_O"][0]) @ u
    after_01 = (W["blocks.0.attn.W_V"][1] @ W["blocks.0.attn.W_O"][1]) @ after_20
    assert [s.node for s in result.steps] == ["ln_final", "2.0", "0.1"]
    expected = [np.linalg.norm(u), np.linalg.norm(after_20), np.linalg.norm(after_01)]
    for step, norm in zip(result.steps, expected):
        assert isinstance(step.norm, float)
        assert abs(step.norm - norm) <= 1e-12 * norm
    assert [s.boundary_t for s in result.steps] == [None, None, None]
    assert result.path == "0.1 -> 2.0"


def test_points_with_an_unknown_layernorm_name_are_refused_in_every_mode(model, obs):
    message = ("points has unknown LayerNorm names ['ln_fnal']; names are 'blocks.<layer>.ln1', "
               "'blocks.<layer>.ln2' and 'ln_final'")
    with pytest.raises(InputError, match=_exactly(message)):
        refimpl.propagate(model, obs, ["1.0"], points={"ln_fnal": np.ones(16)})


def test_mlp_node_without_its_points_is_refused(model, obs):
    message = ("MLP node MLP1 needs mlp_points[1] = (x_neg, x_pos): two MLP inputs (ln_2 outputs) on either side "
               "of the decision boundary")
    with pytest.raises(InputError, match=_exactly(message)):
        refimpl.propagate(model, obs, ["MLP1"])
    with pytest.raises(InputError, match=_exactly(message)):
        refimpl.propagate(model, obs, ["MLP1"], mlp_points={2: (np.ones(16), -np.ones(16))})


# ------------------------------------------------------------------ mlp_points
def _pair(model):
    return refimpl.mlp_inputs(model, 1, [3, 1, 4, 1, 5], [2, 7, 1, 8, 2])


def test_mlp_points_as_a_two_row_array_equal_the_pair(model, obs):
    x_neg, x_pos = _pair(model)
    as_pair = refimpl.propagate(model, obs, ["MLP1"], mlp_points={1: (x_neg, x_pos)}, mlp_fallback="mean")
    as_rows = refimpl.propagate(model, obs, ["MLP1"], mlp_points={1: np.stack([x_neg, x_pos])}, mlp_fallback="mean")
    as_list = refimpl.propagate(model, obs, ["MLP1"], mlp_points={1: [x_neg, x_pos]}, mlp_fallback="mean")
    np.testing.assert_array_equal(as_rows.vector, as_pair.vector)
    np.testing.assert_array_equal(as_list.vector, as_pair.vector)
    assert as_rows.steps[-1].boundary_t == as_pair.steps[-1].boundary_t is not None


@pytest.mark.parametrize("mlp_points, message", [
    (5, "mlp_points must be a mapping {layer: (x_neg, x_pos)}, got int"),
    ({-1: (np.ones(16), -np.ones(16))}, "mlp_points key -1 (a layer) must be at least 0, got -1"),
    ({3: (np.ones(16), -np.ones(16))}, "mlp_points key 3 (a layer) must be below 3, got 3"),
    ({1: 5}, "mlp_points[1] must be a pair (x_neg, x_pos) of MLP inputs, got int"),
    ({1: (np.ones(16),) * 3}, "mlp_points[1] must be a pair (x_neg, x_pos) of MLP inputs, got tuple of 3"),
    ({1: np.ones((3, 16))}, "mlp_points[1] must be a pair (x_neg, x_pos) of MLP inputs, got tuple of 3"),
    ({1: np.ones(16)}, "mlp_points[1] must be a pair (x_neg, x_pos) of MLP inputs, got ndarray"),
    ({1: (np.ones(3), np.ones(16))}, "mlp_points[1] x_neg must have shape (16,), got (3,)"),
    ({1: (np.ones(16), np.ones(3))}, "mlp_points[1] x_pos must have shape (16,), got (3,)"),
])
def test_mlp_points_refusals(model, obs, mlp_points, message):
    with pytest.raises(InputError, match=_exactly(message)):
        refimpl.propagate(model, obs, ["MLP1"], mlp_points=mlp_points)


# ------------------------------------------------------------------ parse_path
@pytest.mark.parametrize("path, labels", [
    ((1, 0), ["1.0"]),
    (("0.1", "2.0"), ["0.1", "2.0"]),
    (["0.1", (2, 0)], ["0.1", "2.0"]),
    (("mlp", 1), ["MLP1"]),
    ("MLP2", ["MLP2"]),
    ([(0, 1), "MLP0", "1.1"], ["0.1", "MLP0", "1.1"]),
])
def test_parse_path_reads_one_node_or_a_sequence(model, path, labels):
    assert [n.label for n in refimpl.parse_path(model, path)] == labels


@pytest.mark.parametrize("path, message", [
    ([], "a path needs at least one node"),
    ((), "a path needs at least one node"),
    (["2.0", "1.0"], "path 2.0 -> 1.0 is not in increasing layer order (2.0 cannot feed 1.0)"),
    (["1.0", "1.1"], "path 1.0 -> 1.1 is not in increasing layer order (1.0 cannot feed 1.1)"),
    (["MLP1", "1.0"], "path MLP1 -> 1.0 is not in increasing layer order (MLP1 cannot feed 1.0)"),
    (["0.1", "0.1"], "path 0.1 -> 0.1 is not in increasing layer order (0.1 cannot feed 0.1)"),
])
def test_parse_path_refusals(model, path, message):
    with pytest.raises(InputError, match=_exactly(message)):
        refimpl.parse_path(model, path)


# ------------------------------------------------------------------ ln_input_norms
def test_ln_input_norms_use_a_matching_trace_without_a_run(model, monkeypatch):
    ids = np.array([[3, 1, 4, 1, 5], [2, 7, 1, 8, 2]])
    _, trace = model.run_with_trace(ids)
    expected = refimpl.ln_input_norms(model, ids)

    def no_run(*args, **kwargs):
        raise AssertionError("ln_input_norms ran the model although the trace holds its inputs")

    monkeypatch.setattr(model, "run_with_trace", no_run)
    assert refimpl.ln_input_norms(model, ids, trace=trace) == expected


# ------------------------------------------------------------------ parse_node
from refimpl.propagation.paths import Node  # noqa: E402


@pytest.mark.parametrize("spec, label", [
    (Node(1, "mlp"), "MLP1"), (Node(2, "attn", 1), "2.1"), (("mlp", 1), "MLP1"), (("MLP", 2), "MLP2"),
    (("Mlp", 0), "MLP0"), ((2, 1), "2.1"), ("MLP0", "MLP0"), ("1.1", "1.1"),
])
def test_parse_node_reads_every_spelling(model, spec, label):
    node = refimpl.propagation.paths.parse_node(model, spec)
    assert node.label == label
    assert node == (Node(int(label[3:]), "mlp") if label.startswith("MLP") else Node(*map(int, label.split(".")[:1]),
                                                                                      "attn", int(label.split(".")[1])))


@pytest.mark.parametrize("spec", [Node(1, "mlp", 0), Node(1, "attn"), Node(1, "MLP"), Node(1, "ffn")])
def test_parse_node_refuses_an_inconsistent_node(model, spec):
    message = f"cannot read path node {spec!r}: a Node is (layer, 'attn', head) or (layer, 'mlp')"
    with pytest.raises(InputError, match=_exactly(message)):
        refimpl.propagation.paths.parse_node(model, spec)


@pytest.mark.parametrize("spec", [("mlp", 1, 2), ("mlp", "1"), ("mlp", 1.0), ("ffn", 1)])
def test_parse_node_refuses_a_malformed_mlp_tuple(model, spec):
    message = f"cannot read path node {spec!r}: use 'layer.head' (e.g. '17.14') or 'MLP<layer>'"
    with pytest.raises(InputError, match=_exactly(message)):
        refimpl.propagation.paths.parse_node(model, spec)


# ------------------------------------------------------------------ mlp_boundary
@pytest.mark.parametrize("args, message", [
    ((-1, np.ones(16), np.ones(16), -np.ones(16)), "layer must be at least 0, got -1"),
    ((3, np.ones(16), np.ones(16), -np.ones(16)), "layer must be below 3, got 3"),
    ((1, np.ones(3), np.ones(16), -np.ones(16)), "y (the feature after the MLP) must have shape (16,), got (3,)"),
    ((1, np.ones(16), np.ones(3), -np.ones(16)), "x_neg must have shape (16,), got (3,)"),
    ((1, np.ones(16), np.ones(16), np.ones(3)), "x_pos must have shape (16,), got (3,)"),
])
def test_mlp_boundary_refusals_name_the_argument(model, args, message):
    with pytest.raises(InputError, match=_exactly(message)):
        refimpl.mlp_boundary(model, *args)


def test_mlp_boundary_refuses_an_unknown_fallback_before_the_other_arguments(model):
    with pytest.raises(InputError, match=_exactly("fallback must be None or 'mean', got 'median'")):
        refimpl.mlp_boundary(model, -1, np.ones(3), np.ones(16), -np.ones(16), fallback="median")


def test_float32_mlp_node_takes_the_jacobian_at_the_boundary_point_in_the_model_dtype(tmp_path):
    """The boundary is searched in float64; the MLP's Jacobian is then taken at that point rounded to the
    model's dtype (the activation the model itself could carry), not at the float64 point."""
    from refimpl.propagation import jacobians as J

    m = small_model(tmp_path, "float32")
    o = refimpl.observable(m, {5: 1, 7: -1})
    x_neg, x_pos = refimpl.mlp_inputs(m, 1, [3, 1, 4, 1, 5], [2, 7, 1, 8, 2])
    result = refimpl.propagate(m, o, ["MLP1"], mlp_points={1: (x_neg, x_pos)}, mlp_fallback="mean")
    point = refimpl.mlp_boundary(m, 1, o.residual, x_neg, x_pos, fallback="mean").point
    W, p = m.weights, "blocks.1.mlp."
    rounded = J.mlp_vjp(point.astype(np.float32), W[p + "W_in"], W[p + "b_in"], W[p + "W_out"], o.residual)
    unrounded = J.mlp_vjp(point, W[p + "W_in"], W[p + "b_in"], W[p + "W_out"], o.residual)
    assert not np.array_equal(rounded, unrounded)  # the two readings differ here, so the test can tell them apart
    np.testing.assert_array_equal(result.vector, rounded)


# ------------------------------------------------------------------ boundary_point / final_ln_boundary
def _line(x):
    return float(x[0])  # f(x) = x_0: a sign change between (-1, ..) and (+1, ..) at t = 1/2


def test_boundary_point_names_the_function_and_the_option():
    a, b = np.array([1.0, 0.0]), np.array([2.0, 0.0])
    message = ("function has no sign change between the two points (f(x_neg) = 1, f(x_pos) = 2): "
               "pick a negative and a positive example, or pass fallback='mean' to target the mean value")
    with pytest.raises(InputError, match=_exactly(message)):
        refimpl.boundary_point(_line, a, b)
    boundary = refimpl.boundary_point(_line, a, b, fallback="mean")
    assert (boundary.target, boundary.f_neg, boundary.f_pos) == (1.5, 1.0, 2.0)
    assert abs(boundary.t - 0.5) <= 1e-14


@pytest.mark.parametrize("fallback", ["median", 1])
def test_boundary_point_refuses_an_unknown_fallback_even_with_a_sign_change(fallback):
    a, b = np.array([-1.0, 0.0]), np.array([1.0, 0.0])
    with pytest.raises(InputError, match=_exactly(f"fallback must be None or 'mean', got {fallback!r}")):
        refimpl.boundary_point(_line, a, b, fallback=fallback)


@pytest.mark.parametrize("a, b", [(np.ones(3), np.ones(4)), (np.ones((2, 2)), np.ones((2, 2))), (np.ones(3), np.ones((3, 1)))])
def test_boundary_point_refuses_end_points_of_two_shapes(a, b):
    message = f"boundary end points must be two vectors of one shape, got {a.shape} and {b.shape}"
    with pytest.raises(InputError, match=_exactly(message)):
        refimpl.boundary_point(_line, a, b)


def test_final_ln_boundary_falls_back_to_the_mean_only_when_asked(model, obs):
    _, trace = model.run_with_trace(np.array([[3, 1, 4, 1, 5]]))
    x = trace["blocks.2.hook_resid_post"][0, -1]
    # x and 1.5 x + 0.1 are on one side of the boundary for this model (the first check asserts it)
    with pytest.raises(InputError, match=r"^n \. logits has no sign change between the two points .* or pass "
                                         r"fallback='mean' to target the mean value$"):
        refimpl.final_ln_boundary(model, obs, x, 1.5 * x + 0.1)
    boundary = refimpl.final_ln_boundary(model, obs, x, 1.5 * x + 0.1, fallback="mean")
    assert boundary.target == 0.5 * (boundary.f_neg + boundary.f_pos) != 0.0
    assert 0.0 <= boundary.t <= 1.0


@pytest.mark.parametrize("side", ["x_neg", "x_pos"])
def test_final_ln_boundary_names_the_bad_end_point(model, obs, side):
    points = {"x_neg": np.ones(16), "x_pos": -np.ones(16)}
    points[side] = np.ones(3)
    with pytest.raises(InputError, match=_exactly(f"{side} must have shape (16,), got (3,)")):
        refimpl.final_ln_boundary(model, obs, points["x_neg"], points["x_pos"])


@pytest.mark.parametrize("f_neg, f_pos, t", [(0.0, 1.0, 0.0), (0.0, -1.0, 0.0), (1.0, 0.0, 1.0), (-1.0, 0.0, 1.0)])
def test_boundary_point_at_an_end_where_f_is_zero(f_neg, f_pos, t):
    """A zero at an end point is a sign change (<= on both sides), and that end is the boundary itself."""
    a, b = np.array([f_neg, 7.0]), np.array([f_pos, -7.0])
    boundary = refimpl.boundary_point(_line, a, b)
    assert boundary.t == t and boundary.target == 0.0
    np.testing.assert_array_equal(boundary.point, a if t == 0.0 else b)


def test_boundary_point_root_to_the_stated_accuracy():
    """f(t) = exp(3 t) - 2 on [0, 1]: root ln(2) / 3. brentq with xtol 1e-14 finds it to 1e-14 (with scipy's
    default xtol 2e-12 it stops 1.5e-13 away)."""
    boundary = refimpl.boundary_point(lambda x: np.exp(3 * x[0]) - 2.0, np.zeros(2), np.ones(2))
    assert abs(boundary.t - np.log(2) / 3) <= 1e-14
    np.testing.assert_allclose(boundary.point, [boundary.t, boundary.t], rtol=0, atol=1e-15)


def test_boundary_point_names_the_callers_option():
    a, b = np.array([1.0, 0.0]), np.array([2.0, 0.0])
    with pytest.raises(InputError, match=r"or pass my_option='mean' to target the mean value$"):
        refimpl.boundary_point(_line, a, b, option="my_option")
    with pytest.raises(InputError, match=_exactly("my_option must be None or 'mean', got 'x'")):
        refimpl.boundary_point(_line, a, b, fallback="x", option="my_option")


@pytest.mark.parametrize("side", ["x_neg", "x_pos"])
def test_boundary_point_refuses_a_non_finite_end_point(side):
    points = {"x_neg": np.array([-1.0, 0.0]), "x_pos": np.array([1.0, 0.0])}
    points[side] = np.array([1.0, np.nan])
    with pytest.raises(InputError, match=_exactly(f"boundary end point {side} has non-finite entries (NaN or inf)")):
        refimpl.boundary_point(_line, points["x_neg"], points["x_pos"])


@pytest.mark.parametrize("ends", [(np.inf, 1.0), (-1.0, np.inf), (np.nan, np.nan)])
def test_boundary_point_refuses_a_function_not_finite_at_an_end(ends):
    values = {0: ends[0], 1: ends[1]}
    f = lambda x: values[int(x[0])]  # noqa: E731
    message = f"function is not finite at the end points (f(x_neg) = {ends[0]}, f(x_pos) = {ends[1]})"
    with pytest.raises(InputError, match=_exactly(message)):
        refimpl.boundary_point(f, np.array([0.0]), np.array([1.0]))


# ------------------------------------------------------------------ traced
from refimpl.propagation.layernorms import traced  # noqa: E402

NAMES = ["blocks.0.hook_resid_pre", "blocks.1.ln2.hook_normalized"]
TRACE_IDS = np.array([[3, 1, 4, 1, 5], [2, 7, 1, 8, 2]])


def test_traced_returns_a_trace_of_these_ids_holding_exactly_the_names_itself(model):
    _, trace = model.run_with_trace(TRACE_IDS, names=NAMES)
    assert traced(model, TRACE_IDS, NAMES, trace) is trace
    assert traced(model, TRACE_IDS, NAMES[:1], trace) is trace


@pytest.mark.parametrize("other", [np.array([[3, 1, 4, 1, 6], [2, 7, 1, 8, 2]]), TRACE_IDS[:1], TRACE_IDS[:, :4]])
def test_traced_runs_again_on_other_ids_recording_only_the_names(model, other):
    _, trace = model.run_with_trace(other, names=NAMES)
    fresh = traced(model, TRACE_IDS, NAMES, trace)
    assert fresh is not trace
    assert set(fresh) == set(NAMES)
    np.testing.assert_array_equal(fresh.ids, TRACE_IDS)
    _, reference = model.run_with_trace(TRACE_IDS, names=NAMES)
    for name in NAMES:
        np.testing.assert_array_equal(fresh[name], reference[name])


def test_traced_runs_again_when_the_trace_lacks_a_name_or_its_ids(model):
    _, trace = model.run_with_trace(TRACE_IDS, names=NAMES[:1])
    assert set(traced(model, TRACE_IDS, NAMES, trace)) == set(NAMES)
    plain = {name: np.zeros(1) for name in NAMES}  # a mapping with the names but no ids: not a run on these ids
    assert set(traced(model, TRACE_IDS, NAMES, plain)) == set(NAMES)
    assert set(traced(model, TRACE_IDS, NAMES)) == set(NAMES)


def test_traced_runs_a_one_token_prompt(model):
    one = np.array([[4]])
    fresh = traced(model, one, NAMES)
    assert fresh[NAMES[0]].shape == (1, 1, 16)


def test_head_features_final_ln_apart_from_layernorm(model, obs):
    with pytest.raises(InputError, match=_exactly(f"final_ln must be one of {MODES}, got 'fold'")):
        refimpl.head_features(model, obs, final_ln="fold")
    F = refimpl.head_features(model, obs, "ignore", final_ln="estimate", norms={"ln_final": 2.0})
    u = np.sqrt(16) * model.weights["ln_final.w"] * obs.residual / 2.0
    W_OV = model.weights["blocks.1.attn.W_V"][0] @ model.weights["blocks.1.attn.W_O"][0]
    np.testing.assert_allclose(F[1, 0], W_OV @ u, rtol=1e-12, atol=0)


@pytest.mark.parametrize("what", ["norms", "points"])
@pytest.mark.parametrize("function", ["head_features", "propagate"])
def test_an_unknown_layernorm_name_is_refused_in_every_mode(model, obs, what, function):
    message = (f"{what} has unknown LayerNorm names ['ln_fnal']; names are 'blocks.<layer>.ln1', "
               "'blocks.<layer>.ln2' and 'ln_final'")
    args = (model, obs) if function == "head_features" else (model, obs, ["1.0"])
    with pytest.raises(InputError, match=_exactly(message)):
        getattr(refimpl, function)(*args, **{what: {"ln_fnal": np.ones(16)}})


# ------------------------------------------------------------------ head_features: dtype and exact points
@pytest.fixture(scope="module")
def model32(tmp_path_factory):
    return small_model(tmp_path_factory.mktemp("propin32"), "float32")


@pytest.mark.parametrize("model_dtype, residual_dtype", [("float32", "float32"), ("float32", "float64"),
                                                         ("float64", "float32"), ("float64", "float64")])
def test_head_features_come_out_in_the_wider_of_the_model_and_observable_dtypes(model, model32, model_dtype,
                                                                                residual_dtype):
    """Never a silent downcast (a float64 observable on a float32 model stays float64), never a silent upcast
    of a float32 run either."""
    import dataclasses

    m = model32 if model_dtype == "float32" else model
    o = refimpl.observable(m, {5: 1, 7: -1})
    o = dataclasses.replace(o, residual=o.residual.astype(residual_dtype))
    out = refimpl.head_features(m, o)
    assert out.dtype == np.result_type(model_dtype, residual_dtype)
    W = m.weights
    expected = W["blocks.2.attn.W_V"][1] @ (W["blocks.2.attn.W_O"][1] @ o.residual)
    np.testing.assert_allclose(out[2, 1], expected, rtol=1e-5 if "float32" in (model_dtype, residual_dtype)
                               else 1e-12)


def test_head_features_exact_refuses_a_point_of_the_wrong_length_by_name(model, obs):
    points = refimpl.ln_input_points(model, [[3, 1, 4, 1, 5]])
    points["blocks.1.ln1"] = np.ones(17)
    with pytest.raises(InputError, match=_exactly("input activation of blocks.1.ln1 (points['blocks.1.ln1']) "
                                                  "must have shape (16,), got (17,)")):
        refimpl.head_features(model, obs, "exact", final_ln="ignore", points=points)


def test_head_features_exact_reads_points_given_as_lists(model, obs):
    points = refimpl.ln_input_points(model, [[3, 1, 4, 1, 5]])
    as_lists = {k: v.tolist() for k, v in points.items()}
    np.testing.assert_array_equal(refimpl.head_features(model, obs, "exact", final_ln="ignore", points=as_lists),
                                  refimpl.head_features(model, obs, "exact", final_ln="ignore", points=points))


def test_layer_norm_factor_names_the_mode_it_refuses(model):
    from refimpl.propagation.layernorms import layer_norm_factor

    with pytest.raises(InputError, match=_exactly("layernorm mode must be one of ['ignore', 'estimate', 'exact'], "
                                                  "got 'Exact'")):
        layer_norm_factor(model, "ln_final", np.ones(16), "Exact", False, None, None)


@pytest.mark.parametrize("mode, option", [("estimate", "norms"), ("exact", "points")])
def test_layer_norm_factor_checks_the_type_of_its_mapping_itself(model, mode, option):
    """The inner function's own type check (callers check the keys; a list must not reach `name in mapping`)."""
    from refimpl.propagation.layernorms import layer_norm_factor

    mappings = {"norms": None, "points": None, option: [("ln_final", 1.0)]}
    with pytest.raises(InputError, match=_exactly(f"{option} must be a mapping {{LayerNorm name: value}} (e.g. from "
                                                  f"ln_input_{option}), got list")):
        layer_norm_factor(model, "ln_final", np.ones(16), mode, False, mappings["norms"], mappings["points"])


def test_exact_layer_norm_of_a_float32_model_is_taken_at_the_point_in_float32(model32):
    """A float64 point is rounded to the feature's dtype (the activation the float32 model carries); the
    feature stays float32 rather than turning float64 through the point."""
    from refimpl.propagation import jacobians as J

    o = refimpl.observable(model32, {5: 1, 7: -1})
    points = {k: v.astype(np.float64) + 1e-9 for k, v in refimpl.ln_input_points(model32, [[3, 1, 4, 1, 5]]).items()}
    result = refimpl.propagate(model32, o, ["1.0"], "exact", final_ln="ignore", points=points)
    assert result.vector.dtype == np.float32
    W = model32.weights
    y = W["blocks.1.attn.W_V"][0] @ (W["blocks.1.attn.W_O"][0] @ o.residual)
    expected = J.layer_norm_vjp(points["blocks.1.ln1"].astype(np.float32), W["blocks.1.ln1.w"], model32.config.eps, y)
    np.testing.assert_array_equal(result.vector, expected)


def test_unknown_layernorm_names_are_listed_up_to_five(model, obs):
    norms = {f"ln{i}": 1.0 for i in range(7)}
    message = ("norms has unknown LayerNorm names ['ln0', 'ln1', 'ln2', 'ln3', 'ln4']; names are "
               "'blocks.<layer>.ln1', 'blocks.<layer>.ln2' and 'ln_final'")
    with pytest.raises(InputError, match=_exactly(message)):
        refimpl.propagate(model, obs, ["1.0"], "estimate", norms=norms)


def test_propagate_names_the_type_it_got_for_the_observable(model):
    with pytest.raises(InputError, match=_exactly("observable must be an Observable (from refimpl.observable(model, "
                                                  "{token: weight})), got dict")):
        refimpl.propagate(model, {5: 1}, ["1.0"])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_exact_point_that_overflows_the_model_dtype_is_refused_by_name(model32):
    o = refimpl.observable(model32, {5: 1, 7: -1})
    points = refimpl.ln_input_points(model32, [[3, 1, 4, 1, 5]])
    points["blocks.1.ln1"] = np.full(16, 1e39)  # finite in float64, inf in float32
    with pytest.raises(InputError, match=_exactly("input activation of blocks.1.ln1 (points['blocks.1.ln1']) has "
                                                  "non-finite entries in float32")):
        refimpl.propagate(model32, o, ["1.0"], "exact", final_ln="ignore", points=points)


def test_layer_norm_factor_refuses_a_point_of_another_shape_than_the_feature(model):
    """The inner function alone: a [d] point for an [H, d] feature block (head_features broadcasts first)."""
    from refimpl.propagation.layernorms import layer_norm_factor

    with pytest.raises(InputError, match=_exactly("input activation of blocks.0.ln1 has shape (16,), "
                                                  "expected (2, 16)")):
        layer_norm_factor(model, "blocks.0.ln1", np.ones((2, 16)), "exact", True, None,
                          {"blocks.0.ln1": np.ones(16).tolist()})
