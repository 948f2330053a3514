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


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_at_one_logit_position_is_chunked_by_that_positions_work(model, monkeypatch, resume):
    """forward(logits_at=...) takes as many prompts per chunk as chunk_rows(logits_at=...) says, resumed or not
    (a budget of 4 rows at one position is 4 * one // full rows when every position's logits are kept)."""
    ids = np.arange(1, 1 + 8 * T).reshape(8, T) % model.config.d_vocab
    _, clean = model.run_with_trace(ids)
    model.chunk_bytes = 4 * model._row_bytes(T, frozenset(), T - 1)[1]
    assert model.chunk_rows(T, logits_at=-1) == 4 and model.chunk_rows(T) < 4
    edits = {"blocks.1.hook_resid_pre": lambda x: x} if resume else {}
    chunks = []
    monkeypatch.setattr(model, "_execute", _spy_chunks(model._execute, chunks))
    logits = model.forward(ids, edits=edits, resume=clean if resume else None, logits_at=-1)
    assert chunks == [4, 4] and logits.shape == (8, model.config.d_vocab)


def _spy_chunks(execute, chunks):
    """``Model._execute`` recording the number of prompts of each chunk it runs."""
    def spy(B, T, record, edits, position, run_rows):
        def counted(a, b, hooks):
            chunks.append(min(b, B) - a)
            return run_rows(a, b, hooks)
        return execute(B, T, record, edits, position, counted)
    return spy


@pytest.mark.parametrize("shape", [(61, 16, 2, 24, 32), (500, 32, 8, 128, 128), (50, 32, 2, 512, 16)])
@pytest.mark.parametrize("logits_at", [None, -1])
def test_the_working_set_estimate_bounds_the_measured_peak(tmp_path, shape, logits_at):
    """The bytes one prompt's run is budgeted (``_row_bytes``' work) are at least the peak numpy allocates
    running it (tracemalloc), with logits at every position or one; measured here 0.45 to 0.7 of the estimate."""
    import tracemalloc

    from verification.references.fixtures import gpt_neo_config, random_tensors, write_checkpoint

    V, d, H, m, n = shape
    config = gpt_neo_config(vocab=V, d_model=d, n_layers=2, n_heads=H, window=4, d_mlp=m, n_ctx=n)
    model = refimpl.load(write_checkpoint(tmp_path, config, random_tensors(config, seed=0)), dtype="float64")
    ids = np.arange(n)[None] % V
    model.forward(ids, logits_at=logits_at)
    tracemalloc.start()
    try:
        model.forward(ids, logits_at=logits_at)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    position = None if logits_at is None else n - 1
    assert peak <= model._row_bytes(n, frozenset(), position)[1]


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
    (np.zeros((0, 5), np.int64), "token ids are empty (shape (0, 5)): need at least one token"),
    (np.zeros((3, 0), np.int64), "token ids are empty (shape (3, 0)): need at least one token"),
    (np.array([0, 61]), "token id 61 is out of range [0, 61)"),  # the lowest id is 0: the highest is named
    (np.array([[0, 5], [1, 70]]), "token id 70 is out of range [0, 61)"),
    (np.array([-1, 61]), "token id -1 is out of range [0, 61)"),
    (np.array([5, 1, 3], dtype=np.uint8) + 60, "token id 65 is out of range [0, 61)"),
])
def test_bad_token_ids_are_named(model, ids, message):
    with pytest.raises(refimpl.InputError) as info:
        model.forward(ids)
    assert str(info.value) == message


@pytest.mark.parametrize("at, message", [(1.5, "logits_at must be an integer, got 1.5 (float)"),
                                         ("0", "logits_at must be an integer, got '0' (str)"),
                                         (T, f"logits_at {T} is outside the {T} positions"),
                                         (-T - 1, f"logits_at {-T - 1} is outside the {T} positions")])
def test_a_bad_logit_position_is_named(model, at, message):
    with pytest.raises(refimpl.InputError) as info:
        model.forward(np.arange(T), logits_at=at)
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
    original = type(model.blocks)._run_from

    def spy(self, start, resid, hooks, position):
        chunks.append(resid.shape[0])
        return original(self, start, resid, hooks, position)

    monkeypatch.setattr(type(model.blocks), "_run_from", spy)
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


def test_a_chunked_run_returns_the_dtype_an_unchunked_run_does(tmp_path):
    """Chunking assembles the logits and every traced activation in the model's dtype (float32 stays float32)
    and equal to the unchunked run's."""
    from verification.references.fixtures import small_model

    model = small_model(tmp_path, dtype="float32")
    ids = np.arange(1, 1 + 3 * T).reshape(3, T) % model.config.d_vocab
    whole_logits, whole = model.run_with_trace(ids)
    model.chunk_bytes = 1  # one prompt per chunk
    logits, trace = model.run_with_trace(ids)
    assert logits.dtype == whole_logits.dtype == np.float32
    np.testing.assert_array_equal(logits, whole_logits)
    for name in whole:
        assert trace[name].dtype == whole[name].dtype == np.float32, name
        np.testing.assert_array_equal(trace[name], whole[name])


def _bytes_per_prompt(model, ids, names, logits_at):
    """What one prompt's outputs hold, measured: its logits and traced activations' bytes."""
    logits, trace = model.run_with_trace(ids, names=names, logits_at=logits_at)
    return (logits.nbytes + sum(trace[n].nbytes for n in trace)) // len(ids)


def _mb(n_bytes):
    return f"{n_bytes / 1e6:.1f} MB"


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A vocabulary of 5,000: a prompt's logits (1.3 MB at 32 tokens) show in the messages' 0.1 MB steps."""
    from verification.references.fixtures import gpt_neo_config, random_tensors, write_checkpoint

    config = gpt_neo_config(vocab=5000, d_model=16, n_layers=2, n_heads=2, window=4, n_ctx=32)
    return refimpl.load(write_checkpoint(tmp_path_factory.mktemp("wide"), config, random_tensors(config)),
                        dtype="float64")


@pytest.mark.parametrize("names", [(), ("blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post")])
@pytest.mark.parametrize("logits_at", [None, -1])
@pytest.mark.parametrize("rows", [1, 4])
def test_running_out_of_memory_is_named_with_the_sizes(wide, monkeypatch, names, logits_at, rows):
    """numpy's MemoryError inside a run becomes an InputError giving the outputs' size (measured here from a
    run that fits) and the chunk's (the working-set estimate, bounded by test_the_working_set_... above)."""
    model, T = wide, 32
    ids = np.arange(1, 1 + 4 * T).reshape(4, T) % model.config.d_vocab
    out = _bytes_per_prompt(model, ids, list(names), logits_at)
    position = None if logits_at is None else T - 1
    work = model._row_bytes(T, frozenset(names), position)[1]
    monkeypatch.setattr(refimpl.oracle.memory, "available_memory", lambda: None)
    model.chunk_bytes = rows * work

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(model.blocks, "_run", exhausted)
    with pytest.raises(refimpl.InputError) as info:
        model.run_with_trace(ids, names=list(names), logits_at=logits_at)
    assert str(info.value) == (
        f"token ids: ran out of memory running 4 prompts x {T} tokens (the logits{' and trace' if names else ''} "
        f"need {_mb(4 * out)}, each chunk of {rows} prompts about {_mb(rows * work)} more); "
        "pass fewer prompts at a time or lower model.chunk_bytes")


@pytest.mark.parametrize("names", [(), ("blocks.1.attn.hook_pattern",)])
def test_the_memory_probe_is_asked_exactly_when_a_run_needs_more_than_its_threshold(model, monkeypatch, names):
    """A run needing ``need`` = B x (outputs + ...) + rows x work bytes consults available_memory only above
    refimpl.oracle.memory._CHECK_MEMORY_ABOVE: at need - 1 a probe reporting too little memory refuses the batch,
    at need and need + 1 it is not asked."""
    ids = np.arange(1, 1 + 4 * T).reshape(4, T) % model.config.d_vocab
    out = _bytes_per_prompt(model, ids, list(names), None)
    work = model._row_bytes(T, frozenset(names), None)[1]
    model.chunk_bytes = 2 * work
    need = 4 * out + 2 * work
    asked = []
    monkeypatch.setattr(refimpl.oracle.memory, "available_memory", lambda: asked.append(1) or 4 * out)
    for threshold, refused in ((need - 1, True), (need, False), (need + 1, False)):
        monkeypatch.setattr(refimpl.oracle.memory, "_CHECK_MEMORY_ABOVE", threshold)
        asked.clear()
        if refused:
            with pytest.raises(refimpl.InputError, match="are too many for the memory available"):
                model.run_with_trace(ids, names=list(names))
        else:
            model.run_with_trace(ids, names=list(names))
        assert asked == ([1] if refused else []), threshold


def _sizes(model, ids, names, logits_at=None):
    """(B, T, outputs per prompt measured, work per prompt estimated) of a run of ``ids``."""
    B, n = ids.shape
    position = None if logits_at is None else n - 1
    return B, n, _bytes_per_prompt(model, ids, list(names), logits_at), model._row_bytes(n, frozenset(names), position)[1]


@pytest.mark.parametrize("names", [(), ("blocks.1.attn.hook_pattern",)])
def test_a_batch_whose_outputs_and_one_prompt_do_not_fit_is_refused_at_the_edge(wide, monkeypatch, names):
    """Refused exactly when B x outputs + one prompt's work exceeds the memory available (one byte less than
    that refuses, that and one byte more run), naming the sizes and how many prompts would fit."""
    ids = np.arange(1, 1 + 4 * 32).reshape(4, 32) % wide.config.d_vocab
    B, n, out, work = _sizes(wide, ids, names)
    monkeypatch.setattr(refimpl.oracle.memory, "_CHECK_MEMORY_ABOVE", 0)
    wide.chunk_bytes = work  # one prompt a chunk
    for available in (B * out + work - 1, work - 1):
        monkeypatch.setattr(refimpl.oracle.memory, "available_memory", lambda: available)
        with pytest.raises(refimpl.InputError) as info:
            wide.run_with_trace(ids, names=list(names))
        assert str(info.value) == (
            f"token ids: {B} prompts x {n} tokens are too many for the memory available: the logits "
            f"[{B}, {n}, 5000] (float64){' and the trace' if names else ''} alone need {_mb(B * out)}, and "
            f"{_mb(available)} is available; pass fewer prompts at a time (about {max(0, (available - work) // out)} "
            f"fit){' or record fewer activations' if names else ''}")
    assert f"(about {B - 1} fit)" in _refusal(wide, monkeypatch, ids, names, B * out + work - 1)
    assert "(about 0 fit)" in _refusal(wide, monkeypatch, ids, names, work - 1)
    for available in (B * out + work, B * out + work + 1):
        monkeypatch.setattr(refimpl.oracle.memory, "available_memory", lambda: available)
        wide.run_with_trace(ids, names=list(names))


def _refusal(model, monkeypatch, ids, names, available):
    monkeypatch.setattr(refimpl.oracle.memory, "available_memory", lambda: available)
    with pytest.raises(refimpl.InputError) as info:
        model.run_with_trace(ids, names=list(names))
    return str(info.value)


def test_chunks_shrink_to_the_memory_left_beside_the_outputs(wide, monkeypatch):
    """With room for 4 prompts a chunk by chunk_bytes, a chunk holds as many prompts as (available - outputs)
    // work allows, and at least one: 2 at B x outputs + 2 work, 1 a byte below that and at one work."""
    ids = np.arange(1, 1 + 4 * 32).reshape(4, 32) % wide.config.d_vocab
    B, n, out, work = _sizes(wide, ids, ())
    monkeypatch.setattr(refimpl.oracle.memory, "_CHECK_MEMORY_ABOVE", 0)
    wide.chunk_bytes = 4 * work
    for available, chunks in ((B * out + 5 * work, [4]), (B * out + 2 * work, [2, 2]),
                              (B * out + 2 * work - 1, [1, 1, 1, 1]), (B * out + work, [1, 1, 1, 1])):
        monkeypatch.setattr(refimpl.oracle.memory, "available_memory", lambda: available)
        seen = []
        monkeypatch.setattr(wide, "_execute", _spy_chunks(type(wide)._execute.__get__(wide), seen))
        wide.forward(ids)
        assert seen == chunks, (available - B * out) / work
