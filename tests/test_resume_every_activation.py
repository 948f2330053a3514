"""``resume=`` and ``run_from`` for EVERY activation name and every layer kind (global and local), not only for
the edits someone thought of: an edit through ``resume=`` equals the same edit on a full run, in the logits
and in every recorded activation; ``run_from`` from every allowed start equals a full run and every other
name is refused; chunked runs give each chunk its own rows."""

import numpy as np
import pytest

import refimpl
from refimpl import InputError
from verification.references.fixtures import FAMILIES, family_config, random_tensors, write_checkpoint
from tests.test_resume import count_blocks
from verification.policy.tolerances import relative_error, tolerance

SAME = tolerance("identity", "float64")
N_LAYERS = 4
IDS = np.random.default_rng(5).integers(0, 53, size=(3, 9))
# Which half of block l an activation belongs to, written out here (not taken from the code under test): the
# first half ends with hook_attn_out, the second starts at hook_resid_mid.
SECOND_HALF = ("hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post",
               "hook_mlp_out", "hook_resid_post")


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tmp_path_factory):
    config = family_config(request.param, vocab=53, d_model=16, n_layers=N_LAYERS, n_heads=2, window=3, n_ctx=32)
    folder = write_checkpoint(tmp_path_factory.mktemp("resume-all"), config, random_tensors(config, seed=4),
                              dtype="float64")
    return refimpl.load(folder, dtype="float64")


@pytest.fixture(scope="module")
def clean(model):
    return model.run_with_trace(IDS)


def nudge(x):
    """Changes every finite entry (masked -inf attention scores stay masked), and not by a scale and a constant
    shift alone, which a LayerNorm reading it would undo."""
    return np.where(np.isfinite(x), x * 1.25 + 0.05 * np.cos(np.arange(x.shape[-1])), x)


def agree(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    finite = np.isfinite(b)
    return bool(np.array_equal(np.isfinite(a), finite) and relative_error(a[finite], b[finite]) <= SAME)


def first_block(name: str) -> int:
    """The first block a resumed run must run in full for an edit of ``name``."""
    if name.startswith("ln_final."):
        return N_LAYERS
    if not name.startswith("blocks."):
        return 0
    layer, rest = int(name.split(".")[1]), name.split(".", 2)[2]
    return layer + 1 if rest in SECOND_HALF else layer


ALL_NAMES = refimpl.activation_names(N_LAYERS)


def test_the_layer_kinds_are_both_covered(model):
    local = [None, 3, None, 3] if model.family.name == "gpt_neo" else [None] * N_LAYERS  # GPT-2: all global
    assert [model.config.window(l) for l in range(N_LAYERS)] == local


@pytest.mark.parametrize("name", ALL_NAMES)
def test_an_edit_of_every_activation_through_resume_equals_the_full_run(model, clean, name, monkeypatch):
    clean_logits, clean_trace = clean
    edits = {name: nudge}
    full_logits, full_trace = model.run_with_trace(IDS, edits=edits)
    assert relative_error(full_logits, clean_logits) > 1e-6, "the edit must matter for the test to mean anything"
    blocks = count_blocks(model, monkeypatch)
    logits, trace = model.run_with_trace(IDS, edits=edits, resume=clean_trace)
    assert relative_error(logits, full_logits) <= SAME  # the edit was applied, once, where it belongs
    assert set(trace) == set(full_trace)
    for key in full_trace:  # every recorded value, the edited one and the ones before the start included
        assert agree(trace[key], full_trace[key]), key
    assert blocks == list(range(first_block(name), N_LAYERS)), blocks  # layers below the edit are not rerun
    assert relative_error(model.forward(IDS, edits=edits, resume=clean_trace, logits_at=-2),
                          full_logits[:, -2]) <= SAME


@pytest.mark.parametrize("name", ALL_NAMES[::3])
def test_resume_with_a_trace_lacking_what_the_run_needs_is_a_full_run(model, clean, name):
    """A trace that lacks the start activation, or activations before it that are asked for, is not used."""
    full_logits, full_trace = model.run_with_trace(IDS, edits={name: nudge})
    starts = [n for n in ALL_NAMES if n.endswith(("hook_resid_pre", "hook_resid_mid"))]
    _, only_starts = model.run_with_trace(IDS, names=starts)  # every start, nothing else
    logits, trace = model.run_with_trace(IDS, edits={name: nudge}, resume=only_starts)
    assert relative_error(logits, full_logits) <= SAME
    for key in full_trace:
        assert agree(trace[key], full_trace[key]), key
    _, nothing_useful = model.run_with_trace(IDS, names=["ln_final.hook_scale"])
    assert relative_error(model.forward(IDS, edits={name: nudge}, resume=nothing_useful), full_logits) <= SAME


@pytest.mark.parametrize("name", ALL_NAMES[::5])
def test_resumed_and_chunked_runs_give_each_chunk_its_rows(model, clean, name, monkeypatch):
    full_logits, full_trace = model.run_with_trace(IDS, edits={name: nudge})
    monkeypatch.setattr(model, "chunk_bytes", 1)  # one prompt per chunk
    assert model._rows_per_chunk(3, 9, frozenset()) == 1
    logits, trace = model.run_with_trace(IDS, edits={name: nudge}, resume=clean[1])
    assert relative_error(logits, full_logits) <= SAME
    for key in full_trace:
        assert agree(trace[key], full_trace[key]), key


STARTS = [f"blocks.{l}.hook_{half}" for l in range(N_LAYERS) for half in ("resid_pre", "resid_mid")]


@pytest.mark.parametrize("name", STARTS)
def test_run_from_every_start_equals_the_full_run(model, clean, name, monkeypatch):
    clean_logits, clean_trace = clean
    later = ALL_NAMES[ALL_NAMES.index(name):]
    logits, trace = model.run_from(name, clean_trace[name])
    assert relative_error(logits, clean_logits) <= SAME
    assert sorted(trace) == sorted(later)
    for key in later:
        assert agree(trace[key], clean_trace[key]), key
    # the activation is the start: an edit of it applies
    edited = model.forward(IDS, edits={name: nudge})
    assert relative_error(model.run_from(name, clean_trace[name], edits={name: nudge})[0], edited) <= SAME
    monkeypatch.setattr(model, "chunk_bytes", 1)  # chunks of one prompt: each chunk runs from its own rows
    assert relative_error(model.run_from(name, clean_trace[name])[0], clean_logits) <= SAME
    assert relative_error(model.run_from(name, clean_trace[name], logits_at=0)[0], clean_logits[:, 0]) <= SAME


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if n not in STARTS])
def test_run_from_refuses_every_other_activation(model, clean, name):
    value = clean[1][name]
    with pytest.raises(InputError, match="can start from"):
        model.run_from(name, value)
