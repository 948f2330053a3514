"""Experiments' defaults, refusals and edge cases on a small random model (mutants of these survived the
case-study tests, which use the defaults' values or never reach the edge)."""

import numpy as np
import pytest

import refimpl
from refimpl import InputError
from refimpl import experiments as ex
from refimpl.case_study import experiments as clean_runs_module
from verification.references.fixtures import exactly as _exactly, small_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return small_model(tmp_path_factory.mktemp("exin"))


@pytest.fixture(scope="module")
def obs(model):
    return refimpl.observable(model, {5: 1, 7: -1})


def test_mlp_segment_samples_41_points_plus_the_boundary_by_default(model, obs):
    x_neg, x_pos = refimpl.mlp_inputs(model, 1, [3, 1, 4, 1, 5], [2, 7, 1, 8, 2])
    table = ex.mlp_segment(model, 1, obs.residual, x_neg, x_pos)
    assert len(table) == 42 and sum(r["is_boundary"] for r in table) == 1
    grid = [r["t"] for r in table if not r["is_boundary"]]
    np.testing.assert_allclose(grid, np.linspace(0, 1, 41), rtol=0, atol=0)


def _ln_final_error_by_hand(model, groups, observable):
    """Table 4 from separate runs of every prompt set and the LayerNorm written out (no shared code path
    with the experiment's one-run-per-group reading)."""
    from refimpl.propagation import jacobians as J

    last = f"blocks.{model.config.n_layers - 1}.hook_resid_post"
    W, eps = model.weights, model.config.eps
    w, b, u = W["ln_final.w"], W["ln_final.b"], observable.residual

    def f(x):
        c = x - x.mean(-1, keepdims=True)
        return (c / np.sqrt((c * c).mean(-1, keepdims=True) + eps) * w + b) @ u

    inputs = [tuple(model.run_with_trace(np.asarray(ids), names=[last])[1][last][:, -1] for ids in pair)
              for pair in groups]
    error = np.zeros((len(groups), len(groups)))
    for i, (xf, xm) in enumerate(inputs):
        x0 = refimpl.final_ln_boundary(model, observable, xm.mean(0), xf.mean(0), fallback="mean").point
        grad = J.layer_norm_vjp(x0, w, eps, u)
        for j, (yf, ym) in enumerate(inputs):
            xs = np.concatenate([yf, ym])
            error[i, j] = np.abs(f(x0) + (xs - x0) @ grad - f(xs)).mean()
    return error


def test_ln_final_error_reads_groups_whose_female_and_male_prompts_differ_in_length(model, obs):
    groups = [([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]], [[2, 7, 1, 8], [2, 8, 1, 8]]),
              ([[1, 1, 2, 3], [5, 8, 13, 21]], [[4, 6, 6, 9], [1, 0, 3, 4]])]
    error = ex.ln_final_approximation_error(model, groups, obs)
    expected = _ln_final_error_by_hand(model, groups, obs)
    np.testing.assert_allclose(error, expected, rtol=1e-12, atol=0)
    assert np.abs(expected - expected.T).max() > 1e-3 * np.abs(expected).max()  # the orientation shows


def test_ln_final_error_falls_back_to_the_mean_by_default_only(model, obs):
    """Equal female and male prompts: no sign change between their means, so only the (default) "mean"
    fallback gives a boundary point; fallback=None refuses."""
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]]
    groups = [(prompts, prompts)]
    error = ex.ln_final_approximation_error(model, groups, obs)
    np.testing.assert_allclose(error, _ln_final_error_by_hand(model, groups, obs), rtol=1e-12, atol=0)
    with pytest.raises(refimpl.propagation.propagate.NoSignChange):
        ex.ln_final_approximation_error(model, groups, obs, fallback=None)


@pytest.mark.parametrize("position", [-2, -1, 0, 1, 4])
def test_observable_values_at_every_position_equal_the_logits_there(model, obs, position):
    ids = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    logits = model.forward(ids)  # [B, T, V], every position
    np.testing.assert_allclose(ex.observable_values(model, ids, obs, position=position),
                               logits[:, position] @ obs.vocab, rtol=1e-13, atol=1e-13)


def test_layer_norm_gain_variance_rows(model):
    ids = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    table = ex.layer_norm_gain_variance(model, ids)
    _, trace = model.run_with_trace(ids, names=["blocks.2.hook_resid_mid"])
    (row,) = [r for r in table if r["layernorm"] == "blocks.2.ln2"]
    w = model.weights["blocks.2.ln2.w"]
    variance = ((w - w.mean()) ** 2).mean()
    mean_abs = np.abs(trace["blocks.2.hook_resid_mid"]).mean()
    assert set(row) == {"layernorm", "gain_variance", "mean_abs_input", "ratio"}
    assert row["gain_variance"] == pytest.approx(variance, rel=1e-12)
    assert row["mean_abs_input"] == pytest.approx(mean_abs, rel=1e-12)
    assert row["ratio"] == pytest.approx(variance / mean_abs, rel=1e-12)


CLEAN = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
CORRUPT = np.array([[3, 1, 4, 2, 5], [9, 2, 6, 4, 3]])


@pytest.mark.parametrize("chunk", [True, False, 0, -1, 1.5, 2.0, "2"])
def test_activation_patching_refuses_a_chunk_that_is_not_a_whole_number_from_1(model, obs, chunk):
    with pytest.raises(InputError, match=_exactly(f"chunk must be a whole number >= 1 (variants x prompts per run), "
                                                  f"got {chunk!r}")):
        ex.activation_patch_heads(model, CLEAN, CORRUPT, obs, chunk=chunk)


@pytest.mark.parametrize("chunk", [1, 2, np.int64(3)])
def test_activation_patching_in_chunks_from_1_equals_the_default(model, obs, chunk):
    np.testing.assert_allclose(ex.activation_patch_heads(model, CLEAN, CORRUPT, obs, chunk=chunk),
                               ex.activation_patch_heads(model, CLEAN, CORRUPT, obs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", [ex.activation_patch_heads, ex.path_patch_heads])
def test_patching_names_the_shapes_that_do_not_pair_up(model, obs, fn):
    with pytest.raises(InputError, match=_exactly("clean and corrupted prompts must pair up: shapes (2, 5) and "
                                                  "(1, 5)")):
        fn(model, CLEAN, CORRUPT[:1], obs)


def test_best_fit_computes_in_float64_whatever_it_is_given():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50).astype(np.float32)
    y = (0.7 * x + 0.1 * rng.normal(size=50)).astype(np.float32)
    assert ex.best_fit(x, y) == ex.best_fit(x.astype(np.float64), y.astype(np.float64))
    assert ex.best_fit(x, y.astype(np.float64)) == ex.best_fit(x.astype(np.float64), y.astype(np.float64))


def test_head_input_scores_of_a_float32_model_are_float32_dot_products(tmp_path):
    m = small_model(tmp_path, "float32")
    features = [np.linspace(-1, 1, 16), np.cos(np.arange(16.0))]  # float64 features
    scores = ex.head_input_scores(m, CLEAN, 1, features)
    _, trace = m.run_with_trace(CLEAN, names=["blocks.1.ln1.hook_normalized"])
    x = trace["blocks.1.ln1.hook_normalized"].reshape(-1, 16)
    assert scores.dtype == np.float32 and scores.shape == (2, 10)
    np.testing.assert_array_equal(scores, np.stack(features).astype(np.float32) @ x.T)


def _run_sizes(model, monkeypatch):
    sizes = []
    run_from = model.run_from

    def spy(name, x, *args, **kwargs):
        sizes.append(x.shape[0])
        return run_from(name, x, *args, **kwargs)

    monkeypatch.setattr(model, "run_from", spy)
    return sizes


def test_activation_patching_runs_whole_variants_of_at_most_chunk_rows(model, obs, monkeypatch):
    """chunk counts variants x prompts: chunk=4 with 2 prompts runs the 2 heads of a layer together; chunk=1
    still runs one whole variant (2 rows) at a time."""
    for chunk, expected in [(4, [4, 4, 4]), (3, [2] * 6), (1, [2] * 6)]:
        sizes = _run_sizes(model, monkeypatch)
        ex.activation_patch_heads(model, CLEAN, CORRUPT, obs, chunk=chunk)
        assert sizes == expected, chunk
        monkeypatch.undo()


def test_activation_patching_by_default_fills_the_budget_of_a_last_position_run(model, obs, monkeypatch):
    """The default chunk is what model.chunk_bytes allows for runs that keep the last position's logits only."""
    T = CLEAN.shape[1]
    row = model._row_bytes(T, frozenset(), T - 1)[1]
    monkeypatch.setattr(model, "chunk_bytes", 4 * row)
    assert model.chunk_rows(T, logits_at=-1) == 4 and model.chunk_rows(T) < 4  # every position's logits: fewer
    sizes = _run_sizes(model, monkeypatch)
    ex.activation_patch_heads(model, CLEAN, CORRUPT, obs)
    assert sizes == [4, 4, 4]


def test_activation_patching_of_one_token_prompts(model, obs):
    """T = 1: the default chunk is budgeted at the only position (a fixed position 1 or -2 would be outside)."""
    clean, corrupt = np.array([[3], [9]]), np.array([[4], [8]])
    whole = ex.activation_patch_heads(model, clean, corrupt, obs)
    np.testing.assert_allclose(whole, ex.activation_patch_heads(model, clean, corrupt, obs, per_position=True)[..., 0],
                               rtol=1e-12, atol=1e-12)
    assert np.abs(whole).max() > 0


def test_bias_mitigation_search_defaults_to_four_heads_at_an_absolute_minus_50(model, obs):
    n_same = refimpl.observable(model, {11: 1, 13: -1})
    table = ex.bias_mitigation_search(model, CLEAN, obs, n_same)
    assert len(table) == 4
    assert all(r["relative_multiplier"] is None and r["k"] == -50.0 for r in table)
    couplings = refimpl.coupling(refimpl.head_features(model, obs), refimpl.head_features(model, n_same))
    assert [r["coupling"] for r in table] == sorted(couplings.ravel())[:4]


@pytest.mark.parametrize("position, ok", [(-6, False), (-5, True), (4, True), (5, False)])
def test_steer_position_bounds(model, obs, position, ok):
    args = (model, CLEAN, {"o": obs}, "blocks.1.hook_resid_pre", position, np.ones(16), [1.0])
    if ok:
        (row,) = ex.steer(*args)
        assert row["position"] == position and row["o_effect"] != 0.0 and row["multiplier"] == 1.0
        assert set(row) == {"activation", "position", "multiplier", "o_effect"}
        assert row["activation"] == "blocks.1.hook_resid_pre"
    else:
        with pytest.raises(InputError, match=_exactly(f"position {position} is outside prompts of 5 tokens")):
            ex.steer(*args)


def test_steer_refuses_an_unknown_activation_by_name(model, obs):
    with pytest.raises(InputError, match=_exactly("unknown activation 'blocks.1.hook_resid' to steer")):
        ex.steer(model, CLEAN, {"o": obs}, "blocks.1.hook_resid", 0, np.ones(16), [1.0])


def test_steered_runs_resume_from_the_steered_layer(model, obs, monkeypatch):
    from tests.test_resume import count_blocks

    ex.clean_run(model, CLEAN)  # the shared clean run, made before the spy
    blocks = count_blocks(model, monkeypatch)
    ex.steer(model, CLEAN, {"o": obs}, "blocks.2.hook_resid_pre", 1, np.ones(16), [1.0, -2.0])
    assert blocks == [2, 2]


def test_steering_a_float32_model_adds_the_vector_rounded_to_float32_then_scaled(tmp_path):
    """The vector is taken in the model's dtype first (as an activation of that model), then scaled by k (a
    numpy float64 here, so the product is float64) and rounded once more to the model's dtype before the add."""
    m = small_model(tmp_path, "float32")
    o = refimpl.observable(m, {5: 1, 7: -1})
    vector = np.random.default_rng(1).normal(size=16) / 3  # float64, not representable in float32
    k, name, position = np.float64(37.3), "blocks.1.hook_resid_pre", 2

    def add(x):
        x[:, position] += (k * vector.astype(np.float32)).astype(np.float32)
        return x

    clean = m.forward(CLEAN, logits_at=-1)
    expected = float(((m.forward(CLEAN, edits={name: add}, logits_at=-1) - clean) @ o.vocab).mean())
    (row,) = ex.steer(m, CLEAN, {"o": o}, name, position, vector, [k])
    assert row["o_effect"] == expected


def test_clean_runs_are_kept_most_recently_used_first_and_read_only(model):
    """The shared clean runs: the CLEAN_RUNS most recent prompt sets, a reused set moving to the front; each
    records exactly clean_names, and its logits cannot be written through."""
    sets = {name: np.array([[i, i + 1, i + 2]]) for i, name in enumerate("ABCDEFGH", start=3)}

    def cached():
        return ["ABCDEFGH"[int(t.ids[0, 0]) - 3] for _, _, t in clean_runs_module._clean_runs]

    ex.clear_clean_runs()
    for name in "ABCD":
        ex.clean_run(model, sets[name])
    assert cached() == ["D", "C", "B", "A"]
    logits, trace = ex.clean_run(model, sets["A"])
    assert cached() == ["A", "D", "C", "B"]
    for name in "EFG":
        ex.clean_run(model, sets[name])
    assert cached() == ["G", "F", "E", "A"]
    again = ex.clean_run(model, sets["A"])
    assert again[1] is trace and again[0] is logits  # still the same run: not recomputed
    ex.clean_run(model, sets["H"])
    assert cached() == ["H", "A", "G", "F"]
    assert set(trace) == set(ex.clean_names(model))
    assert not logits.flags.writeable
    with pytest.raises(ValueError):
        logits[0, 0] = 1.0
    ex.clear_clean_runs()
    assert cached() == []


def test_prompts_of_one_length_are_required_by_name(model, obs):
    with pytest.raises(InputError, match=_exactly("prompts must be token ids shaped [batch, seq] (one length), got "
                                                  "shape (5,)")):
        ex.direct_logit_attribution(model, [3, 1, 4, 1, 5], obs)
