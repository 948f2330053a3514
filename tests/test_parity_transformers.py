"""Parity with transformers' GPTNeoForCausalLM (eager attention): logits and every residual stream."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install -e '.[torch]')")
pytest.importorskip("transformers", reason="parity tests need transformers (pip install -e '.[torch]')")

import refimpl  # noqa: E402
from verification.policy.tolerances import relative_error, tolerance  # noqa: E402
from verification.peers.torch_peer import exact_attention, load_peer, make_random_checkpoint, peer_forward  # noqa: E402

SHAPES = [
    # (d_model, n_layers, n_heads, window, kinds, seq, batch)
    dict(d_model=24, n_layers=1, n_heads=3, window=5, kinds=["local"], seq=13, batch=2),
    dict(d_model=20, n_layers=2, n_heads=5, window=4, kinds=["local", "global"], seq=17, batch=3),
    dict(d_model=32, n_layers=3, n_heads=4, window=6, kinds=["global", "local", "local"], seq=20, batch=1),
    dict(d_model=21, n_layers=4, n_heads=7, window=3, kinds=["global", "local", "global", "local"], seq=11, batch=2),
]


@pytest.fixture(scope="module", params=range(len(SHAPES)), ids=lambda i: f"shape{i}")
def case(request, tmp_path_factory):
    spec = dict(SHAPES[request.param])
    seq, batch = spec.pop("seq"), spec.pop("batch")
    folder = make_random_checkpoint(tmp_path_factory.mktemp("peer"), seed=request.param, vocab=97, n_ctx=32, **spec)
    ids = np.random.default_rng(request.param).integers(0, 97, size=(batch, seq))
    assert seq > spec["window"], "sequences must be longer than the window"
    return folder, ids


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logits_and_residuals_match(case, dtype):
    folder, ids = case
    model = refimpl.load(folder, dtype=dtype)
    peer_logits, peer_resid = peer_forward(load_peer(folder, dtype), ids)
    names = [f"blocks.{l}.hook_resid_pre" for l in range(model.config.n_layers)]
    names.append(f"blocks.{model.config.n_layers - 1}.hook_resid_post")
    logits, trace = model.run_with_trace(ids, names=names)
    assert relative_error(logits, peer_logits) <= tolerance("forward_parity", dtype)
    for name, expected in zip(names, peer_resid):
        assert relative_error(trace[name], expected) <= tolerance("residual_parity", dtype), name
    # the LayerNorm parameters really were perturbed away from 1 and 0
    assert np.abs(model.weights["blocks.0.ln1.w"] - 1).max() > 0.1
    assert np.abs(model.weights["ln_final.b"]).max() > 0.1


def test_float32_cast_is_what_limits_unpatched_agreement(case):
    """Without neutralising transformers' float32 q/k cast, float64 agreement is far worse than 1e-12."""
    folder, ids = case
    model = refimpl.load(folder, dtype="float64")
    peer = load_peer(folder, "float64")
    with torch.no_grad():
        raw = peer(torch.as_tensor(ids)).logits.numpy()
    with exact_attention():
        with torch.no_grad():
            exact = peer(torch.as_tensor(ids)).logits.numpy()
    assert relative_error(model.forward(ids), exact) <= tolerance("forward_parity", "float64")
    assert relative_error(model.forward(ids), raw) > 1e3 * relative_error(model.forward(ids), exact)


def test_stored_float16_matches_peer(tmp_path):
    folder = make_random_checkpoint(tmp_path, seed=7, dtype="float16", vocab=50, d_model=16, n_layers=2,
                                    n_heads=2, window=3, n_ctx=16)
    ids = np.arange(12) % 50
    peer_logits, _ = peer_forward(load_peer(folder, "float64"), ids)
    assert relative_error(refimpl.load(folder, dtype="float64").forward(ids), peer_logits[0]) <= tolerance(
        "forward_parity", "float64")
