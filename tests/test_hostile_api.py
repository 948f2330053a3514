"""Hostile input to the public API: every bad id, edit, option, observable, path or argument is an
InputError whose message names the argument and what is wrong; nothing hangs, nothing is silently wrong.

Cases that could exhaust memory run in a subprocess under RLIMIT_AS and a timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import refimpl
from refimpl import InputError
from refimpl.oracle import memory as model_module
from verification.references.fixtures import gpt_neo_config, random_tensors, write_checkpoint
from verification.policy.tolerances import relative_error, tolerance

SAME = tolerance("identity", "float64")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prop(tmp_path_factory):
    """3 layers x 2 heads, d 16, d_mlp 24, float64 (as in test_propagation)."""
    config = gpt_neo_config(vocab=61, d_model=16, n_layers=3, n_heads=2, window=4, d_mlp=24)
    folder = write_checkpoint(tmp_path_factory.mktemp("hostile_prop"), config, random_tensors(config, seed=2),
                              dtype="float64")
    return refimpl.load(folder, dtype="float64")


@pytest.fixture(scope="module")
def obs(prop):
    return refimpl.observable(prop, {5: 1, 7: -1})


@pytest.fixture(scope="module")
def model32(tmp_path_factory):
    """A float32 model with 1000 GPT-2 tokens (so ' she' = 673 is in its vocabulary)."""
    config = gpt_neo_config(vocab=1000, d_model=16, n_layers=1, n_heads=2)
    folder = write_checkpoint(tmp_path_factory.mktemp("hostile_obs"), config, random_tensors(config, seed=4))
    return refimpl.load(folder, dtype="float32")


@pytest.fixture(scope="module")
def chunky(tmp_path_factory):
    """A float64 model for chunking tests (4 heads so attention is a real share of the working set)."""
    config = gpt_neo_config(vocab=97, d_model=32, n_layers=2, n_heads=4, window=5, n_ctx=24)
    folder = write_checkpoint(tmp_path_factory.mktemp("hostile_chunky"), config, random_tensors(config, seed=7),
                              dtype="float64")
    return refimpl.load(folder, dtype="float64")


# ------------------------------------------------------------------ token ids
@pytest.mark.parametrize("ids, message", [
    ([[1, 2], [3]], r"token ids must be a rectangular .* lengths \[2, 1\]"),
    ([1, 2.5], r"token ids must be integers, got 2.5 \(float\)"),
    (np.array([1.0, 2.0]), r"token ids must be integers, got dtype float64 \(floats are refused even when whole"),
    ([True, False], "token ids must be integers, got dtype bool"),
    ([1, True, 2], "token ids must be integers, got a bool"),
    ([[1, 2], [np.True_, 3]], "token ids must be integers, got a bool"),
    ("hello", r"token ids must be a list or array of integers, got str; encode text with model.to_ids"),
    (None, "token ids must be a list or array of integers, got NoneType"),
    ({1: 2}, "token ids must be a list or array of integers, got dict"),
    ([1, None], r"token ids must be integers, got None \(NoneType\)"),
    ([{"a": 1}], r"token ids must be integers, got \{'a': 1\} \(dict\)"),
    (np.array([1, 2], dtype=object), r"token ids must be an integer array, got an object array"),
    ([1, 2**70], rf"token id {2**70} is out of range \[0, 61\)"),
    ([1, 2**63], rf"token id {2**63} is out of range \[0, 61\)"),  # uint64: beyond int64 but representable
    (np.array([[3]], dtype=np.uint8)[None], r"token ids must be shaped \[seq\] or \[batch, seq\]"),
    (list(range(33)), r"token ids: sequence of 33 tokens is longer than the position table \(32\)"),
])
def test_bad_token_ids(tiny64, ids, message):
    with pytest.raises(InputError, match=message):
        tiny64.forward(ids)
    with pytest.raises(InputError, match=message):
        tiny64.run_with_trace(ids, names=["hook_embed"])


def test_good_token_ids_still_work(tiny64):
    """Lists, tuples, uint8 arrays and empty-float rejection are unchanged; the checks do not copy int64."""
    ids = np.array([[3, 4, 5], [6, 7, 8]])
    expected = tiny64.forward(ids)
    np.testing.assert_array_equal(tiny64.forward(ids.tolist()), expected)
    np.testing.assert_array_equal(tiny64.forward(tuple(map(tuple, ids.tolist()))), expected)
    np.testing.assert_array_equal(tiny64.forward(ids.astype(np.uint8)), expected)
    checked, squeeze = tiny64.check_ids(ids)
    assert np.shares_memory(checked, ids) and not squeeze


def test_to_ids_needs_text(tiny64):
    with pytest.raises(InputError, match="text must be a str, got list"):
        tiny64.to_ids([1, 2])


# ------------------------------------------------------------------ edits and names
def _ok(x):
    return x


@pytest.mark.parametrize("edits, message", [
    ([("hook_embed", _ok)], "edits must be a mapping {activation name: function}, got list"),
    ({"hook_embed": 3}, "edit of hook_embed must be a function value -> new value, got int"),
    ({1: _ok}, r"edits must be keyed by activation-name strings, got 1 \(int\)"),
    ({"hook_embed": lambda x: None}, "edit of hook_embed returned NoneType, expected a numpy array"),
    ({"hook_embed": lambda x: x.tolist()}, "edit of hook_embed returned list, expected a numpy array"),
    ({"blocks.0.hook_resid_mid": lambda x: x * np.nan}, r"edit of blocks.0.hook_resid_mid returned non-finite"),
    ({"blocks.1.mlp.hook_post": lambda x: x + np.inf}, r"edit of blocks.1.mlp.hook_post returned non-finite"),
    ({"blocks.0.attn.hook_attn_scores": lambda x: np.full_like(x, np.inf)},
     r"edit of blocks.0.attn.hook_attn_scores returned NaN or \+inf"),
    ({"blocks.0.attn.hook_attn_scores": lambda x: np.full_like(x, -np.inf)},
     r"edit of blocks.0.attn.hook_attn_scores masks every key of some query"),
    ({"blocks.1.hook_resid_pre": lambda x: x[..., :3]}, r"edit of blocks.1.hook_resid_pre returned shape"),
    ({"blocks.0.hook_mlp_out": lambda x: x.astype(np.float32)}, "returned float32 where the model computes in float64"),
    ({"blocks.0.ln1.hook_scale": lambda x: x @ np.ones((7, 7))},
     r"edit of blocks.0.ln1.hook_scale raised ValueError: matmul"),
])
def test_bad_edits(tiny64, edits, message):
    with pytest.raises(InputError, match=message):
        tiny64.forward([1, 2, 3], edits=edits)


def test_edit_that_raises_keeps_its_cause(tiny64):
    def broken(x):
        raise KeyError("oops")

    with pytest.raises(InputError, match=r"edit of blocks.1.attn.hook_z raised KeyError: 'oops'") as info:
        tiny64.run_with_trace([1, 2], names=[], edits={"blocks.1.attn.hook_z": broken})
    assert isinstance(info.value.__cause__, KeyError)


def test_masking_some_attention_scores_is_allowed(tiny64):
    """-inf scores are how one masks a key: allowed as long as every query keeps a visible key."""
    def mask_first_key(x):
        x[..., 1:, 0] = -np.inf
        return x

    logits, trace = tiny64.run_with_trace([4, 5, 6], names=["blocks.0.attn.hook_pattern"],
                                          edits={"blocks.0.attn.hook_attn_scores": mask_first_key})
    assert np.all(np.isfinite(logits))
    assert np.all(trace["blocks.0.attn.hook_pattern"][0, :, 1:, 0] == 0)


@pytest.mark.parametrize("names, message", [
    (5, "names must be an iterable of activation-name strings, got int"),
    ([1, 2], r"names must be activation-name strings, got 1 \(int\)"),
    (["hook_embed", None], r"names must be activation-name strings, got None"),
    ({"hook_embed": 1}, "names must be an iterable of activation-name strings, got dict"),
    ("hook_embed", "not a single string"),
])
def test_bad_names(tiny64, names, message):
    with pytest.raises(InputError, match=message):
        tiny64.run_with_trace([1, 2], names=names)


# ------------------------------------------------------------------ big batches: chunks and refusals
def _chunk_runs(model, ids, rows, names=None, edits=None):
    """The result of running the chunks of ``rows`` prompts one by one (each small enough to be one chunk)."""
    parts = [model.run_with_trace(ids[i:i + rows], names=names, edits=edits) for i in range(0, len(ids), rows)]
    logits = np.concatenate([p[0] for p in parts])
    return logits, {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}


def test_chunked_forward_and_trace(chunky, monkeypatch):
    ids = np.random.default_rng(3).integers(0, 97, size=(11, 24))
    whole_logits, whole = chunky.run_with_trace(ids)
    assert chunky._rows_per_chunk(11, 24, frozenset()) >= 11  # the default budget runs this in one go
    everything = frozenset(chunky.activation_names())
    _, work = chunky._row_bytes(24, everything)
    monkeypatch.setattr(chunky, "chunk_bytes", 3 * work)  # 3 prompts per chunk: chunks 3, 3, 3, 2
    assert chunky._rows_per_chunk(11, 24, everything) == 3
    logits, trace = chunky.run_with_trace(ids)
    ref_logits, ref = _chunk_runs(chunky, ids, 3)
    # exactly the runs of the chunks, assembled in order, read-only, every activation
    np.testing.assert_array_equal(logits, ref_logits)
    assert set(trace) == set(whole) == set(ref)
    for name in trace:
        np.testing.assert_array_equal(trace[name], ref[name], err_msg=name)
        assert not trace[name].flags.writeable
        masked = np.isneginf(whole[name])  # attention scores: -inf where masked, in both runs
        np.testing.assert_array_equal(np.isneginf(trace[name]), masked)
        assert relative_error(np.where(masked, 0, trace[name]), np.where(masked, 0, whole[name])) <= SAME, name
    # and the unchunked run up to BLAS rounding (a GEMM's rounding can depend on its row count, as for
    # batch vs single prompts); rows stay in order: each row is far closer to its own unchunked row
    assert relative_error(logits, whole_logits) <= SAME
    assert relative_error(chunky.forward(ids), logits) <= SAME  # forward chunks differently (no trace to hold)
    gaps = np.abs(logits[:, None] - whole_logits[None]).max(axis=(2, 3))
    assert np.all(np.argmin(gaps, axis=1) == np.arange(11))


def test_chunked_edits_see_their_chunk(chunky, monkeypatch):
    ids = np.random.default_rng(4).integers(0, 97, size=(7, 10))
    shift = np.linspace(-1, 1, 32)
    seen = []

    def steer(x):
        seen.append(x.shape[0])
        return x + shift

    edits = {"blocks.1.hook_resid_pre": steer}
    whole = chunky.forward(ids, edits=edits)
    assert seen == [7]
    _, work = chunky._row_bytes(10, frozenset())
    monkeypatch.setattr(chunky, "chunk_bytes", 2 * work)
    seen.clear()
    chunked = chunky.forward(ids, edits=edits)
    assert seen == [2, 2, 2, 1]  # documented: an edit is called once per chunk with that chunk's rows
    assert relative_error(chunked, whole) <= SAME
    assert np.abs(chunked - chunky.forward(ids)).max() > 1e-3  # the edit did act


@pytest.mark.parametrize("budget, message", [
    (0, "model.chunk_bytes must be at least 1, got 0"),
    ("1GB", r"model.chunk_bytes must be an integer, got '1GB'"),
    (1.5e9, r"model.chunk_bytes must be an integer, got 1500000000.0"),
])
def test_bad_chunk_budget(tiny64, monkeypatch, budget, message):
    monkeypatch.setattr(tiny64, "chunk_bytes", budget)
    with pytest.raises(InputError, match=message):
        tiny64.forward([1, 2])


def test_batch_too_big_for_memory_is_refused_up_front(tiny64, monkeypatch):
    monkeypatch.setattr(model_module, "_CHECK_MEMORY_ABOVE", 0)
    monkeypatch.setattr(model_module, "available_memory", lambda: 100_000)
    ids = np.ones((64, 30), dtype=np.int64)  # logits 64 * 30 * 61 * 8 = 0.94 MB
    with pytest.raises(InputError, match=r"token ids: 64 prompts x 30 tokens are too many .* logits "
                                         r"\[64, 30, 61\] \(float64\) alone need 0.9 MB.*pass fewer prompts"):
        tiny64.forward(ids)
    with pytest.raises(InputError, match=r"and the trace alone need .* or record fewer activations"):
        tiny64.run_with_trace(ids[:4])


def test_memory_error_inside_the_run_is_named(tiny64, monkeypatch):
    def exhausted(ids, hooks, position=None):
        raise MemoryError

    monkeypatch.setattr(tiny64.blocks, "_run", exhausted)
    with pytest.raises(InputError, match=r"token ids: ran out of memory running 3 prompts x 2 tokens .*fewer prompts"):
        tiny64.forward([[1, 2]] * 3)


def _limited_python(script: str, limit_gb: float = 3.0, timeout: float = 120) -> subprocess.CompletedProcess:
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (int(limit_gb * 2**30), int(limit_gb * 2**30)))

    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, env=env, cwd=ROOT)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")
def test_huge_logits_refused_under_a_memory_limit(tmp_path):
    """2000 x 64 prompts on a 50257-token vocabulary: 25.7 GB of float32 logits -> a named refusal, fast."""
    config = gpt_neo_config(vocab=50257, d_model=8, n_layers=1, n_heads=2, n_ctx=64)
    write_checkpoint(tmp_path, config, random_tensors(config, seed=0))
    result = _limited_python(f"""
        import numpy as np, refimpl
        model = refimpl.load({str(tmp_path)!r}, dtype="float32")
        ids = np.random.default_rng(0).integers(0, 50257, size=(2000, 64))
        try:
            model.forward(ids)
        except refimpl.InputError as error:
            print("REFUSED", error)
        print("ONE", model.forward(ids[:2]).shape)
    """, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "REFUSED token ids: 2000 prompts x 64 tokens are too many" in result.stdout
    assert "[2000, 64, 50257] (float32) alone need 25.73 GB" in result.stdout
    assert "pass fewer prompts at a time" in result.stdout
    assert "ONE (2, 64, 50257)" in result.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")
def test_attention_too_big_unchunked_runs_in_chunks_under_a_memory_limit(tmp_path):
    """32 prompts x 256 tokens x 16 heads: attention [B, H, T, T] is 0.27 GB per array in float64 and an
    unchunked run needs several at once. Under a 1.1 GB address-space limit: with a huge chunk budget
    the chunks still shrink to the memory available; with the memory probe blinded too, numpy's
    MemoryError becomes a named InputError; by default the chunked result equals the prompts one by one."""
    config = gpt_neo_config(vocab=61, d_model=16, n_layers=1, n_heads=16, n_ctx=256, kinds=["global"])
    write_checkpoint(tmp_path, config, random_tensors(config, seed=0), dtype="float64")
    result = _limited_python(f"""
        import numpy as np, refimpl
        from refimpl.oracle import memory as model_module
        from verification.policy.tolerances import relative_error, tolerance
        model = refimpl.load({str(tmp_path)!r}, dtype="float64")
        ids = np.random.default_rng(0).integers(0, 61, size=(32, 256))
        model.chunk_bytes = 1 << 40
        print("MEMORY-AWARE ROWS", model._rows_per_chunk(32, 256, frozenset()))
        model_module.available_memory = lambda: None
        print("BLIND ROWS", model._rows_per_chunk(32, 256, frozenset()))
        try:
            model.forward(ids)
            print("UNCHUNKED RAN")
        except refimpl.InputError as error:
            print("UNCHUNKED REFUSED", error)
        model.chunk_bytes = 1 << 27
        logits = model.forward(ids)
        single = model.forward(ids[-1])
        print("CHUNKED", logits.shape, relative_error(logits[-1], single) <= tolerance("identity", "float64"))
    """, limit_gb=1.1, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = int(result.stdout.split("MEMORY-AWARE ROWS ")[1].split()[0])
    assert 1 <= rows < 32, result.stdout
    assert "BLIND ROWS 32" in result.stdout
    assert "UNCHUNKED REFUSED token ids: ran out of memory running 32 prompts x 256 tokens" in result.stdout, result.stdout
    assert "CHUNKED (32, 256, 61) True" in result.stdout


# ------------------------------------------------------------------ observables
@pytest.mark.parametrize("spec, message", [
    ({" she": 1e39}, r"weight of ' she' is 1e\+39 \(in total\), which is inf in the model's float32"),
    ({" she": 2e38, 673: 2e38}, r"weight of ' she' is 4e\+38 \(in total\), which is inf"),
    ({" she": 1e308, " he": 1, 673: 1e308}, r"weight of ' she' is inf \(in total\)"),
    ({" she": 1, " he": 1e-50}, r"weight of ' he' is 1e-50, which is 0 in the model's float32"),
    ({" she": 10**400}, "weight of ' she' must be a finite number"),
    ({" she": np.True_}, "weight of ' she' must be a finite number"),
])
def test_observable_weights_beyond_the_dtype(model32, spec, message):
    with pytest.raises(InputError, match=message):
        refimpl.observable(model32, spec)


def test_observable_residual_overflowing_the_dtype(model32):
    """Finite float32 weights whose W_U^T n overflows float32 (W_U scaled up x 1000)."""
    loud = refimpl.Model(model32.config, {**model32.weights, "unembed.W_U": model32.weights["unembed.W_U"] * 1000},
                         model32.tokenizer)
    with pytest.raises(InputError, match=r"non-finite residual image W_U\^T n in float32"):
        refimpl.observable(loud, {" she": 3e38, " he": -3e38})
    assert np.isfinite(refimpl.observable(loud, {" she": 3e30, " he": -3e30}).residual).all()


def test_observable_of_a_model_with_non_finite_unembedding(model32):
    W_U = model32.weights["unembed.W_U"].copy()
    W_U[3, 673] = np.inf
    broken = refimpl.Model(model32.config, {**model32.weights, "unembed.W_U": W_U}, model32.tokenizer)
    with pytest.raises(InputError, match="non-finite residual image .* non-finite entries in W_U"):
        refimpl.observable(broken, {" she": 1})
    assert np.isfinite(refimpl.observable(broken, {" he": 1}).residual).all()


def test_observable_name_must_be_text(model32):
    with pytest.raises(InputError, match="observable name must be a str or None, got int"):
        refimpl.observable(model32, {" she": 1}, name=3)


# ------------------------------------------------------------------ propagation
@pytest.mark.parametrize("path, message", [
    ([("mlp", "x")], r"cannot read path node \('mlp', 'x'\)"),
    ([None], "cannot read path node None"),
    (None, "path must be a node .* got NoneType"),
    (5, "path must be a node .* got int"),
    ([(1.5, 2)], r"cannot read path node \(1.5, 2\)"),
    ([[1, 0]], r"cannot read path node \[1, 0\]"),
    ([(True, 0)], r"cannot read path node \(True, 0\)"),
    ([("mlp", True)], r"cannot read path node \('mlp', True\)"),
    ([refimpl.Node(0, "attn", None)], "a Node is \\(layer, 'attn', head\\)"),
    ([refimpl.Node(0, "conv", 1)], "a Node is"),
])
def test_bad_path_nodes(prop, obs, path, message):
    with pytest.raises(InputError, match=message):
        refimpl.path_feature(prop, obs, path)


def test_node_forms_still_parse(prop, obs):
    a = refimpl.path_feature(prop, obs, [refimpl.Node(0, "attn", 1), (np.int64(2), 0)])
    np.testing.assert_array_equal(a, refimpl.path_feature(prop, obs, ["0.1", "2.0"]))


@pytest.mark.parametrize("norms, message", [
    ({"ln_final": "3.0", "blocks.2.ln1": 1.0}, r"input norm of ln_final \(norms\['ln_final'\]\) must be a real number"),
    ({"ln_final": np.inf, "blocks.2.ln1": 1.0}, r"input norm of ln_final .* must be finite, got inf"),
    ({"ln_final": np.nan, "blocks.2.ln1": 1.0}, r"input norm of ln_final .* must be finite, got nan"),
    ({"ln_final": 2.0, "blocks.2.ln1": 0.0}, r"input norm of blocks.2.ln1 .* must be positive, got 0.0"),
    ({"ln_final": 2.0, "blocks.2.ln1": -1}, r"input norm of blocks.2.ln1 .* must be positive"),
    ({"ln_final": 2.0, "blocks.2.ln_1": 1.0}, r"norms has unknown LayerNorm names \['blocks.2.ln_1'\]"),
    ([("ln_final", 2.0)], "norms must be a mapping {LayerNorm name: value}"),
])
def test_bad_norms(prop, obs, norms, message):
    with pytest.raises(InputError, match=message):
        refimpl.path_feature(prop, obs, ["0.1", "2.0"], layernorm="estimate", norms=norms)


def test_bad_points(prop, obs):
    good = refimpl.ln_input_points(prop, np.arange(8))
    bad_shape = {**good, "blocks.1.ln1": np.ones(15)}
    with pytest.raises(InputError, match=r"input activation of blocks.1.ln1 \(points\['blocks.1.ln1'\]\) must have "
                                         r"shape \(16,\), got \(15,\)"):
        refimpl.path_feature(prop, obs, ["1.1"], layernorm="exact", points=bad_shape)
    with pytest.raises(InputError, match=r"input activation of blocks.1.ln1 .* has non-finite entries"):
        refimpl.head_features(prop, obs, layernorm="exact", points={**good, "blocks.1.ln1": np.full(16, np.nan)})
    with pytest.raises(InputError, match=r"input activation of ln_final .* must have shape \(16,\)"):
        refimpl.head_features(prop, obs, layernorm="exact", points={**good, "ln_final": np.ones((2, 16))})


@pytest.fixture(scope="module")
def mlp_pair(prop):
    _, trace = prop.run_with_trace(np.stack([np.arange(8), np.arange(8)[::-1]]), names=["blocks.1.ln2.hook_normalized"])
    return trace["blocks.1.ln2.hook_normalized"][:, -1]


@pytest.mark.parametrize("make, message", [
    (lambda a: {1: (a[0][:8], a[1][:8])}, r"mlp_points\[1\] x_neg must have shape \(16,\), got \(8,\)"),
    (lambda a: {1: (a[0], a[1], a[0])}, r"mlp_points\[1\] must be a pair \(x_neg, x_pos\) .* tuple of 3"),
    (lambda a: {1: a[0]}, r"mlp_points\[1\] must be a pair"),
    (lambda a: {1: (a[0] * np.nan, a[1])}, r"mlp_points\[1\] x_neg has non-finite entries"),
    (lambda a: {7: (a[0], a[1])}, r"mlp_points key 7 \(a layer\) must be below 3"),
    (lambda a: {"1": (a[0], a[1])}, r"mlp_points key '1' \(a layer\) must be an integer"),
    (lambda a: [(a[0], a[1])], "mlp_points must be a mapping"),
])
def test_bad_mlp_points(prop, obs, mlp_pair, make, message):
    with pytest.raises(InputError, match=message):
        refimpl.path_feature(prop, obs, ["MLP1"], mlp_points=make(mlp_pair), mlp_fallback="mean")


def test_fallback_is_checked_first_and_named(prop, obs, mlp_pair, monkeypatch):
    a = mlp_pair[0]
    calls = []
    monkeypatch.setattr(refimpl.propagation.propagate.jacobians, "mlp",
                        lambda *args, _f=refimpl.propagation.propagate.jacobians.mlp: calls.append(1) or _f(*args))
    with pytest.raises(InputError, match="mlp_fallback must be None or 'mean', got 'avg'"):
        refimpl.path_feature(prop, obs, ["MLP1"], mlp_points={1: (a, a * 1.0001)}, mlp_fallback="avg")
    with pytest.raises(InputError, match="fallback must be None or 'mean', got True"):
        refimpl.mlp_boundary(prop, 1, obs.residual, a, a * 1.0001, fallback=True)
    with pytest.raises(InputError, match="mlp_fallback must be None or 'mean'"):
        refimpl.beam_search_paths(prop, obs, mlp_points={1: (a, -a)}, mlp_fallback="MEAN")
    assert calls == []  # refused before any MLP was evaluated
    # the no-sign-change message names the argument of the function called
    with pytest.raises(InputError, match=r"no sign change.*pass mlp_fallback='mean'"):
        refimpl.path_feature(prop, obs, ["MLP1"], mlp_points={1: (a, a * 1.0001)})
    with pytest.raises(InputError, match=r"no sign change.*pass fallback='mean'"):
        refimpl.mlp_boundary(prop, 1, obs.residual, a, a * 1.0001)


def test_boundary_arguments(prop, obs, mlp_pair):
    with pytest.raises(InputError, match=r"x_pos must have shape \(16,\), got \(3,\)"):
        refimpl.final_ln_boundary(prop, obs, np.ones(16), np.ones(3))
    with pytest.raises(InputError, match="observable must be an Observable"):
        refimpl.final_ln_boundary(prop, {5: 1}, np.ones(16), -np.ones(16))
    with pytest.raises(InputError, match="layer must be below 3, got 3"):
        refimpl.mlp_boundary(prop, 3, obs.residual, *mlp_pair)
    with pytest.raises(InputError, match=r"boundary end point x_neg has non-finite"):
        refimpl.boundary_point(lambda x: x.sum(), np.array([np.nan, 1.0]), np.array([1.0, 1.0]), "mean")


@pytest.mark.parametrize("call, message", [
    (lambda m: refimpl.ln_input_norms(m, np.arange(8)[None], position=99), r"position 99 is out of range .* 8"),
    (lambda m: refimpl.ln_input_norms(m, np.arange(8)[None], position=-9), "position -9 is out of range"),
    (lambda m: refimpl.ln_input_points(m, np.arange(8), position=8), "position 8 is out of range"),
    (lambda m: refimpl.ln_input_points(m, np.arange(8), batch_index=1), "batch_index 1 is out of range .* 1"),
    (lambda m: refimpl.ln_input_points(m, np.arange(8), position=1.0), "position must be an integer, got 1.0"),
    (lambda m: refimpl.ln_input_points(m, [[1, 2], [3]]), "token ids must be a rectangular"),
])
def test_ln_inputs_out_of_range(prop, call, message):
    with pytest.raises(InputError, match=message):
        call(prop)


def test_layernorm_mode_must_be_text(prop, obs):
    with pytest.raises(InputError, match="layernorm must be one of"):
        refimpl.head_features(prop, obs, layernorm=np.array(["ignore"]))


# ------------------------------------------------------------------ scan and beam search
def test_scan_top_k_beyond_the_pairs_returns_only_real_pairs(prop, obs):
    table = refimpl.scan_virtual_heads(prop, obs, top_k=10**9)
    assert len(table) == 3 * 2 // 2 * 2 * 2  # (l1 < l2) pairs x heads^2 = 12
    assert all(r["layer_1"] < r["layer_2"] and np.isfinite(r["norm"]) for r in table)
    assert "0.0 -> 0.0" not in table.column("path")


@pytest.mark.parametrize("top_k, message", [
    (0, "top_k must be at least 1, got 0"), (-3, "top_k must be at least 1, got -3"),
    (2.5, r"top_k must be an integer, got 2.5 \(float\)"), ("5", r"top_k must be an integer, got '5' \(str\)"),
    (True, r"top_k must be an integer, got True \(bool\)"),
])
def test_scan_bad_top_k(prop, obs, top_k, message):
    with pytest.raises(InputError, match=message):
        refimpl.scan_virtual_heads(prop, obs, top_k=top_k)


@pytest.mark.parametrize("options, message", [
    ({"max_length": 0}, "max_length must be at least 1, got 0"),
    ({"max_length": 2.0}, "max_length must be an integer, got 2.0"),
    ({"beam_width": "16"}, "beam_width must be an integer, got '16'"),
    ({"beam_width": False}, "beam_width must be an integer, got False"),
    ({"top_k": -1}, "top_k must be at least 1, got -1"),
    ({"norms": {"ln_final": np.inf}, "layernorm": "estimate"}, "input norm of ln_final .* must be finite"),
])
def test_beam_search_bad_options(prop, obs, options, message):
    with pytest.raises(InputError, match=message):
        refimpl.beam_search_paths(prop, obs, **options)


def test_beam_search_with_huge_limits_finishes(prop, obs):
    table = refimpl.beam_search_paths(prop, obs, max_length=10**9, beam_width=10**9, top_k=10**9)
    assert max(table.column("length")) == 3 and len(table) == 6 + 12 + 8  # every head path: 6, C(3,2)*4, 2^3


def test_beam_too_wide_for_memory_is_refused(prop, obs, monkeypatch):
    monkeypatch.setattr(model_module, "_CHECK_MEMORY_ABOVE", 0)
    monkeypatch.setattr(model_module, "available_memory", lambda: 5000)
    # at most 12 paths of one length (3 layers x 2 heads), each growing into <= 6 heads: 72 vectors of 16 floats
    with pytest.raises(InputError, match=r"beam_width=100000000 would keep up to 72 candidate feature vectors .*"
                                         r"use a smaller beam_width"):
        refimpl.beam_search_paths(prop, obs, max_length=30, beam_width=10**8)
    refimpl.beam_search_paths(prop, obs, max_length=30, beam_width=5)  # 30 vectors: 3840 bytes fit


# ------------------------------------------------------------------ analysis and lens
@pytest.mark.parametrize("call, message", [
    (lambda m: refimpl.vector_lens(m, np.ones(16), k=0), "k must be at least 1, got 0"),
    (lambda m: refimpl.vector_lens(m, np.ones(16), k=2.0), "k must be an integer, got 2.0"),
    (lambda m: refimpl.vector_lens(m, np.ones(15)), r"vector must have shape \(16,\), got \(15,\)"),
    (lambda m: refimpl.vector_lens(m, np.ones((2, 16))), r"vector must have shape \(16,\), got \(2, 16\)"),
    (lambda m: refimpl.vector_lens(m, ["a"] * 16), "vector must be a vector of 16 real numbers"),
    (lambda m: refimpl.vector_lens(m, np.full(16, np.nan)), "vector has non-finite entries"),
    (lambda m: refimpl.vector_lens(m, np.ones(16), apply_ln_final="yes"), "apply_ln_final must be True or False"),
    (lambda m: refimpl.ov_svd(m, 3, 0), "layer must be below 3, got 3"),
    (lambda m: refimpl.ov_svd(m, 0, -1), "head must be at least 0, got -1"),
    (lambda m: refimpl.svd_alignment(m, 1, 2, np.ones(16)), "head must be below 2, got 2"),
    (lambda m: refimpl.svd_alignment(m, 1, 1, np.zeros(16)), "feature is the zero vector"),
    (lambda m: refimpl.svd_alignment(m, 1, 1, np.ones(16), k="3"), "k must be an integer"),
    (lambda m: refimpl.oracle.lens.top_tokens(m, np.ones((2, 61))), r"logits must be a 1-D real vector, got shape \(2, 61\)"),
    (lambda m: refimpl.oracle.lens.lens_logits(m, np.ones(5)), r"resid must be a real array \[..., 16\]"),
    (lambda m: refimpl.head_table(np.ones(4)), r"head_table needs a real \[n_layers, n_heads\] array"),
    (lambda m: refimpl.compare_features(np.ones((3, 2, 16)), np.ones((3, 2, 15))), "feature tables must both be"),
])
def test_bad_analysis_arguments(prop, call, message):
    with pytest.raises(InputError, match=message):
        call(prop)


@pytest.mark.parametrize("y1, y2, s, k, message", [
    ([1.0, np.nan], [0.0, 1.0], 1.0, 0.5, "y1 has non-finite entries"),
    ([1.0, 0.0], [np.inf, 1.0], 1.0, 0.5, "y2 has non-finite entries"),
    ([1.0, 0.0], [0.0, 1.0], np.inf, 0.5, "s must be finite, got inf"),
    ([1.0, 0.0], [0.0, 1.0], 1.0, np.nan, "k must be finite, got nan"),
    ([1.0, 0.0], [0.0, 1.0], -1.0, 0.0, "s is the norm |x| and must be >= 0"),
    ([0.0, 0.0], [0.0, 1.0], 1.0, 0.0, "y1 is the zero vector"),
    ([1.0, 0.0], [0.0, 1.0, 2.0], 1.0, 0.0, r"y1 and y2 must have one shape, got \(2,\) and \(3,\)"),
    ([1e200, 1e200], [0.0, 1.0], 1.0, 0.0, r"\|y1\| or \|y2\| overflows float64"),
    ([1.0, 0.0], [0.0, 1.0], "1", 0.0, "s must be a real number"),
])
def test_theorem2_bad_inputs(y1, y2, s, k, message):
    with pytest.raises(InputError, match=message):
        refimpl.theorem2_bounds(np.array(y1), np.array(y2), s, k)


def test_theorem2_expectation_checks_too():
    with pytest.raises(InputError, match="y1 is the zero vector"):
        refimpl.theorem2_expectation(np.zeros(3), np.ones(3), 1.0)


def test_beam_search_no_sign_change_names_mlp_fallback(prop, obs, mlp_pair):
    a = mlp_pair[0]
    with pytest.raises(refimpl.propagation.propagate.NoSignChange, match=r"y . MLP1 has no sign change.*pass mlp_fallback='mean'"):
        refimpl.beam_search_paths(prop, obs, max_length=1, mlp_points={1: (a, a * 1.0001)})
