"""Observable propagation against references that share no code with it (verification.references.linearized: the
model run along a path by complex step; verification.peers.torch_backend: autograd on the transformers module
graph), and meta-tests: bugs planted in refimpl.propagation.propagate by monkeypatching must make them fail."""

import numpy as np
import pytest

import refimpl
import refimpl.propagation.propagate as propagation
from refimpl.propagation import layernorms
from verification.references.fixtures import FAMILIES, family_config, random_tensors, write_checkpoint
from verification.references.linearized import block_vs_model, frozen_path_check, read_path, reference_path_feature
from verification.policy.tolerances import relative_error, tolerance

FROZEN, SAME = tolerance("frozen_path", "float64"), tolerance("identity", "float64")
IDS = np.array([3, 1, 4, 1, 5, 9, 2, 6])
PATHS = [["1.1"], ["0.1", "2.0"], ["MLP1"], ["0.1", "MLP1", "2.0"]]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tmp_path_factory):
    config = family_config(request.param, vocab=61, d_model=16, n_layers=3, n_heads=2, window=4, d_mlp=24)
    folder = write_checkpoint(tmp_path_factory.mktemp("indep"), config, random_tensors(config, seed=2), dtype="float64")
    return refimpl.load(folder, dtype="float64")


@pytest.fixture(scope="module")
def obs(model):
    return refimpl.observable(model, {5: 1, 7: -1})


@pytest.fixture(scope="module")
def mlp_points(model):
    """Two MLP-1 inputs (ln_2 outputs at the last token of two prompts) on either side of y . MLP = 0."""
    _, trace = model.run_with_trace(np.stack([IDS, IDS[::-1]]), names=["blocks.1.ln2.hook_normalized"])
    a = np.array(trace["blocks.1.ln2.hook_normalized"][0, -1])
    return {1: (a, -a)}


def checks(model, obs, mlp_points, modes=("exact", "estimate"), paths=PATHS):
    """Every (path, mode) frozen check; 'mean' targets the mean when a segment has no sign change."""
    return {(tuple(p), m): frozen_path_check(model, obs, p, IDS, m, FROZEN, mlp_points, "mean")
            for p in paths for m in modes}


# ------------------------------------------------------------------ the references agree with the oracle
def test_paths_with_mlp_nodes_equal_the_model_run_along_them(model, obs, mlp_points):
    results = checks(model, obs, mlp_points, modes=("ignore", "exact", "estimate"))
    assert all(c.passed for c in results.values()), {k: c.measured for k, c in results.items() if not c.passed}


def test_reference_reads_paths_itself_and_finds_its_own_mlp_point(model, obs, mlp_points):
    assert read_path(["0.1", "MLP1", " mlp2"]) == [("attn", 0, 1), ("mlp", 1, None), ("mlp", 2, None)]
    points = refimpl.ln_input_points(model, IDS)
    for path in (["MLP1"], ["0.1", "MLP1", "2.0"]):
        result = refimpl.propagate(model, obs, path, "exact", points=points, mlp_points=mlp_points, mlp_fallback="mean")
        _, ts = reference_path_feature(model, obs, path, IDS, "exact", mlp_points, "mean")
        assert abs(ts[1] - result.steps[-1 if path == ["MLP1"] else -2].boundary_t) <= 1e-9


def test_estimate_mode_for_head_features(model, obs):
    """head_features(estimate) [l, h] is the length-1 path l.h: sqrt(d) gamma_ln1 only, ln_f with 1/|x~|."""
    F = refimpl.head_features(model, obs, "estimate", norms=refimpl.ln_input_norms(model, IDS[None]))
    for l, h in [(0, 0), (2, 1)]:
        reference, _ = reference_path_feature(model, obs, [f"{l}.{h}"], IDS, "estimate")
        assert relative_error(F[l, h], reference) <= FROZEN


def test_estimate_norms_average_prompts_at_the_position(model, obs, mlp_points):
    two = np.stack([IDS, IDS[::-1]])
    assert frozen_path_check(model, obs, ["0.1", "MLP1", "2.0"], two, "estimate", FROZEN, mlp_points, "mean").passed


# ------------------------------------------------------------------ block_frozen_attention vs the model's block
@pytest.mark.parametrize("layer", [0, 2])
def test_block_frozen_attention_equals_the_models_block(model, layer):
    rng = np.random.default_rng(layer)
    for delta in (None, 0.7 * rng.normal(size=(len(IDS), 16))):
        got, expected = block_vs_model(model, IDS, layer, delta)
        assert relative_error(got, expected) <= SAME
    # the comparison can fail: a block whose attention ignores its bias b_O
    got, expected = block_vs_model(model, IDS, layer, None)
    bias = model.weights[f"blocks.{layer}.attn.b_O"]
    assert relative_error(got - bias, expected) > 1e3 * SAME


# ------------------------------------------------------------------ planted bugs
def _swapped(model_, node):
    return f"blocks.{node.layer}.ln2" if node.kind == "attn" else f"blocks.{node.layer}.ln1"


def test_swapped_layer_norms_are_caught_by_the_frozen_checks(model, obs, mlp_points, monkeypatch):
    """Erratum 7's swap (attention reads ln_2, MLP reads ln_1) fails every exact and estimate path check."""
    monkeypatch.setattr(propagation, "layer_norm_of", _swapped)
    failed = [k for k, c in checks(model, obs, mlp_points).items() if not c.passed]
    assert len(failed) == 2 * len(PATHS), failed


def test_mlp_nodes_using_ln_1_are_caught(model, obs, mlp_points, monkeypatch):
    monkeypatch.setattr(propagation, "layer_norm_of", lambda model_, node: f"blocks.{node.layer}.ln1")
    results = checks(model, obs, mlp_points)
    assert all(c.passed is ("MLP1" not in k[0]) for k, c in results.items())


def test_ln_2_inputs_from_resid_pre_are_caught(model, obs, mlp_points, monkeypatch):
    original = layernorms.ln_input_names

    def resid_pre_for_ln2(model_):
        names = original(model_)
        names.update({f"blocks.{l}.ln2": f"blocks.{l}.hook_resid_pre" for l in range(model_.config.n_layers)})
        return names

    monkeypatch.setattr(layernorms, "ln_input_names", resid_pre_for_ln2)
    results = checks(model, obs, mlp_points, modes=("exact",))
    assert not results[(("MLP1",), "exact")].passed and not results[(("0.1", "MLP1", "2.0"), "exact")].passed
    assert results[(("1.1",), "exact")].passed  # attention-only paths never read ln_2


def test_norms_averaged_over_all_tokens_are_caught(model, obs, mlp_points, monkeypatch):
    def all_tokens(model_, ids, position=-1):
        names = layernorms.ln_input_names(model_)
        _, trace = model_.run_with_trace(np.atleast_2d(ids), names=sorted(set(names.values())))
        return {ln: float(np.linalg.norm(trace[act], axis=-1).mean()) for ln, act in names.items()}

    monkeypatch.setattr(layernorms, "ln_input_norms", all_tokens)
    monkeypatch.setattr(refimpl, "ln_input_norms", all_tokens)
    results = checks(model, obs, mlp_points, modes=("estimate",))
    assert not any(c.passed for c in results.values())


def test_latest_node_skipping_the_norm_is_caught(model, obs, mlp_points, monkeypatch):
    """The estimate rule: the earliest node gets sqrt(d) gamma only. Plant: the latest node does instead."""
    original = propagation.layer_norm_factor
    calls = {"n": 0}

    def latest_skips(model_, name, y, mode, last, norms, points):
        if name == "ln_final":
            calls["n"] = 0
            return original(model_, name, y, mode, last, norms, points)
        calls["n"] += 1
        return original(model_, name, y, mode, calls["n"] == 1, norms, points)

    monkeypatch.setattr(propagation, "layer_norm_factor", latest_skips)
    results = checks(model, obs, mlp_points, modes=("estimate",))
    assert not results[(("0.1", "MLP1", "2.0"), "estimate")].passed
    assert not results[(("0.1", "2.0"), "estimate")].passed
    assert results[(("1.1",), "estimate")].passed  # one node: earliest = latest


def test_swapped_layer_norms_are_caught_by_the_torch_check(model, obs, monkeypatch):
    pytest.importorskip("torch", reason="the torch backend needs torch (pip install -e '.[torch]')")
    from verification.peers.torch_backend import path_check
    from verification.peers.torch_peer import load_peer

    peer = load_peer(model.path, "float64")
    pair = np.stack([IDS, IDS[::-1]])
    tol = tolerance("path_autograd", "float64")
    paths = (["1.1"], ["0.1", "MLP1", "2.0"])
    assert all(path_check(model, obs, p, IDS, tol, pair, "mean", peer=peer).passed for p in paths)
    monkeypatch.setattr(propagation, "layer_norm_of", _swapped)
    assert not any(path_check(model, obs, p, IDS, tol, pair, "mean", peer=peer).passed for p in paths)
