"""The runner's inputs at their edges, with the exact messages: the memory budget's batch size
(``Model.chunk_rows``) at, below and above each boundary, the shape rule of a resumed activation (``run_from``),
and every refusal of token ids."""

import numpy as np
import pytest

import refimpl

T = 7


@pytest.fixture
def model(tiny_dir):
    return refimpl.load(tiny_dir, dtype="float64")


def test_rows_are_the_budget_over_one_row_of_work(model):
    work = model._row_bytes(T, frozenset(), None)[1]
    for rows in (1, 3):
        model.chunk_bytes = rows * work
        assert model.chunk_rows(T) == rows
        model.chunk_bytes = rows * work - 1
        assert model.chunk_rows(T) == max(1, rows - 1)
    model.chunk_bytes = 1  # less than one row: still one row at a time
    assert model.chunk_rows(T) == 1


def test_rows_with_one_logit_position_need_less_work(model):
    full, one = model._row_bytes(T, frozenset(), None)[1], model._row_bytes(T, frozenset(), T - 1)[1]
    assert one < full
    model.chunk_bytes = 4 * one
    assert model.chunk_rows(T, logits_at=-1) == 4 and model.chunk_rows(T, logits_at=T - 1) == 4
    assert model.chunk_rows(T) == 4 * one // full


@pytest.mark.parametrize("budget, message", [(0, "model.chunk_bytes must be at least 1, got 0"),
                                             (-5, "model.chunk_bytes must be at least 1, got -5"),
                                             (2.0, "model.chunk_bytes must be an integer, got 2.0 (float)")])
def test_a_bad_budget_is_named(model, budget, message):
    model.chunk_bytes = budget
    with pytest.raises(refimpl.InputError) as info:
        model.chunk_rows(T)
    assert str(info.value) == message


@pytest.mark.parametrize("shape", [(1, T, 15), (1, T, 17), (T, 16), (1, 1, T, 16), (0, T, 16), (1, 0, 16)])
def test_run_from_refuses_an_activation_of_another_shape(model, shape):
    d = model.config.d_model
    with pytest.raises(refimpl.InputError) as info:
        model.run_from("blocks.1.hook_resid_pre", np.zeros(shape))
    assert str(info.value) == f"activation for blocks.1.hook_resid_pre must be shaped [batch, seq, {d}], got {shape}"


def test_run_from_accepts_the_right_shape(model):
    ids = np.array([[1, 2, 3, 4, 5, 6, 7]])
    logits, trace = model.run_with_trace(ids)
    again, _ = model.run_from("blocks.1.hook_resid_pre", trace["blocks.1.hook_resid_pre"])
    np.testing.assert_array_equal(again, logits)


# ------------------------------------------------------------------ token ids: each refusal with its exact message
class Unreadable:
    def __array__(self, *args, **kwargs):
        raise ValueError("boom")


RAGGED = "token ids must be a rectangular [seq] or [batch, seq] array of integers; got rows of lengths "


@pytest.mark.parametrize("ids, message", [
    ("abc", "token ids must be a list or array of integers, got str; encode text with model.to_ids(text)"),
    (None, "token ids must be a list or array of integers, got NoneType"),
    ([[1, 2], [3]], RAGGED + "[2, 1]"),
    ([[1, 2], 3], RAGGED + "[2, 'scalar']"),
    ([[1]] * 10 + [[1, 2]] * 2, RAGGED + str([1] * 10)),  # the first 10 rows
    (Unreadable(), "token ids cannot be read as an integer array: boom"),
    ([[[1, 2]]], "token ids must be shaped [seq] or [batch, seq], got shape (1, 1, 2)"),
    # numpy reads these lists as float64 or object: the first element that is not an id is named
    ([0, 2**70], f"token id {2**70} is out of range [0, 61)"),
    ([60, 61, 2**70], "token id 61 is out of range [0, 61)"),
    ([1, 2.0], "token ids must be integers, got 2.0 (float)"),
    (np.array([1, 2], dtype=object),
     "token ids must be an integer array, got an object array: convert with .astype(np.int64)"),
    (np.array([1.0, 2.0]),
     "token ids must be integers, got dtype float64 (floats are refused even when whole: convert with .astype(np.int64))"),
    (np.array(["a", "b"]), "token ids must be integers, got dtype <U1"),
    ([1, True], "token ids must be integers, got a bool among them"),
    ([[1, 2], [3, False]], "token ids must be integers, got a bool among them"),
])
def test_bad_token_ids_are_named(model, ids, message):
    with pytest.raises(refimpl.InputError) as info:
        model.forward(ids)
    assert str(info.value) == message


# ------------------------------------------------------------------ run_from: its start, names and length
START = "a run can start from blocks.{l}.hook_resid_pre or blocks.{l}.hook_resid_mid (l in 0..1), got "


@pytest.mark.parametrize("name", ["blocks.2.hook_resid_pre", "blocks.0.hook_resid_post", "hook_embed", 3])
def test_run_from_names_the_starts_it_allows(model, name):
    with pytest.raises(refimpl.InputError) as info:
        model.run_from(name, np.zeros((1, 3, 16)))
    assert str(info.value) == START + repr(name)


def test_run_from_names_what_it_does_not_compute_in_model_order(model):
    act = np.zeros((1, 3, 16))
    before = ["blocks.0.hook_mlp_out", "blocks.0.hook_resid_mid", "blocks.0.attn.hook_z", "blocks.0.hook_resid_pre",
              "hook_pos_embed", "hook_embed"]
    with pytest.raises(refimpl.InputError) as info:
        model.run_from("blocks.1.hook_resid_pre", act, names=before)
    first4 = ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_z"]
    assert str(info.value) == (f"run_from('blocks.1.hook_resid_pre') does not compute {first4}: "
                               "they come before blocks.1.hook_resid_pre")
    with pytest.raises(refimpl.InputError) as info:
        model.run_from("blocks.1.hook_resid_pre", act, names=["blocks.1.hook_nope"])
    assert str(info.value).startswith("unknown activation names ['blocks.1.hook_nope']; names look like")


def test_run_from_takes_as_many_positions_as_the_position_table(model):
    n_ctx = model.config.n_ctx
    logits, _ = model.run_from("blocks.1.hook_resid_mid", np.zeros((1, n_ctx, 16)), names=[])
    assert logits.shape == (1, n_ctx, model.config.d_vocab)
    with pytest.raises(refimpl.InputError) as info:
        model.run_from("blocks.1.hook_resid_mid", np.zeros((1, n_ctx + 1, 16)))
    assert str(info.value) == f"activation: {n_ctx + 1} positions are more than the position table ({n_ctx})"


def test_to_ids_is_int64_even_for_empty_text():
    m = refimpl.load()  # the bundled model has a tokenizer
    for text in ("", "Mary"):
        ids = m.to_ids(text)
        assert ids.dtype == np.int64 and ids.ndim == 1
    assert m.to_ids("").shape == (0,)


def test_run_from_budgets_one_logit_row_when_asked_for_one_position(model, monkeypatch):
    """With logits_at the working set holds one row of logits: the budget then takes more prompts per chunk."""
    T = 5
    one, full = model._row_bytes(T, frozenset(), T - 1)[1], model._row_bytes(T, frozenset(), None)[1]
    model.chunk_bytes = 2 * one  # two prompts at one position, one prompt at all positions
    assert 2 * one // full == 1
    chunks = []
    original = type(model)._run_from

    def spy(self, start, resid, hooks, position):
        chunks.append(resid.shape[0])
        return original(self, start, resid, hooks, position)

    monkeypatch.setattr(type(model), "_run_from", spy)
    act = np.random.default_rng(0).normal(size=(2, T, 16))
    at_one, _ = model.run_from("blocks.1.hook_resid_pre", act, names=[], logits_at=-1)
    assert chunks == [2]
    chunks.clear()
    every, _ = model.run_from("blocks.1.hook_resid_pre", act, names=[])
    assert chunks == [1, 1]
    np.testing.assert_allclose(at_one, every[:, -1], rtol=0, atol=1e-12 * np.abs(every).max())


def test_the_budgeted_bytes_of_every_activation_are_the_bytes_the_trace_holds(model):
    """Each activation's per-prompt size in the memory budget, against the arrays a traced run returns (for
    two prompt lengths, so the T and T * T terms are told apart)."""
    itemsize = model.dtype.itemsize
    for length in (T, T + 3):
        logits, trace = model.run_with_trace(np.arange(2 * length).reshape(2, length) % model.config.d_vocab)
        logit_bytes = logits[0].nbytes
        assert model._row_bytes(length, frozenset())[0] == logit_bytes
        for name, value in trace.items():
            budgeted = model._row_bytes(length, frozenset({name}))[0] - logit_bytes
            assert budgeted == value[0].size * itemsize, name
