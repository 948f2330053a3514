"""Paying for each forward pass once: logits at one position, runs started from an activation, edited runs
resumed from a clean trace. Every route equals the plain full run to rounding."""

import numpy as np
import pytest

import refimpl
from refimpl import InputError
from verification.references.fixtures import FAMILIES, family_config, random_tensors, write_checkpoint
from verification.policy.tolerances import relative_error, tolerance

SAME = tolerance("identity", "float64")


def close(a, b) -> bool:
    """Equal to rounding, with masked (-inf) attention scores in the same places."""
    a, b = np.asarray(a), np.asarray(b)
    finite = np.isfinite(b)
    return bool(np.array_equal(np.isfinite(a), finite) and relative_error(a[finite], b[finite]) <= SAME)


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tmp_path_factory):
    config = family_config(request.param, vocab=53, d_model=16, n_layers=4, n_heads=2, window=3, n_ctx=32)
    folder = write_checkpoint(tmp_path_factory.mktemp("resume"), config, random_tensors(config, seed=9),
                              dtype="float64")
    return refimpl.load(folder, dtype="float64")


IDS = np.random.default_rng(3).integers(0, 53, size=(3, 9))


def count_blocks(model, monkeypatch) -> list[int]:
    """A spy on the blocks' ``_block``: the layers a run executes in full, in order (shared by the resume tests)."""
    blocks = []
    original = type(model.blocks)._block

    def counting(self, layer, resid, hooks):
        blocks.append(layer)
        return original(self, layer, resid, hooks)

    monkeypatch.setattr(type(model.blocks), "_block", counting)
    return blocks


@pytest.mark.parametrize("position", [-1, 0, 4])
def test_logits_at_one_position(model, position):
    full = model.forward(IDS)
    assert relative_error(model.forward(IDS, logits_at=position), full[:, position]) <= SAME
    assert model.forward(IDS[0], logits_at=position).shape == (53,)
    logits, trace = model.run_with_trace(IDS, names=["ln_final.hook_normalized"], logits_at=position)
    assert logits.shape == (3, 53) and trace["ln_final.hook_normalized"].shape == (3, 9, 16)


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_pre", "blocks.2.hook_resid_pre", "blocks.2.hook_resid_mid",
                                  "blocks.3.hook_resid_mid"])
def test_run_from_an_activation_equals_the_full_run(model, name):
    logits, clean = model.run_with_trace(IDS)
    later = model.activation_names()[model.activation_names().index(name):]
    resumed, trace = model.run_from(name, clean[name])
    assert relative_error(resumed, logits) <= SAME
    assert set(trace) == set(later)
    for key in later:
        assert close(trace[key], clean[key]), key
    shift = np.zeros(16)
    shift[3] = 1.5

    def edit(x):
        return x + shift

    edited = model.forward(IDS, edits={name: edit})
    assert relative_error(model.run_from(name, clean[name], edits={name: edit})[0], edited) <= SAME
    assert relative_error(model.run_from(name, clean[name], logits_at=-1)[0], logits[:, -1]) <= SAME


EDITS = {
    "blocks.1.hook_resid_pre": lambda x: x * 1.1,
    "blocks.2.attn.hook_z": lambda x: x[..., ::-1].copy(),
    "blocks.1.mlp.hook_post": lambda x: x * 0.5,
    "blocks.3.hook_resid_post": lambda x: x + 0.2,
    "ln_final.hook_scale": lambda x: x * 2.0,
}


@pytest.mark.parametrize("edited", list(EDITS))
def test_resumed_edited_runs_equal_full_runs(model, edited, monkeypatch):
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.3.hook_resid_post"]
    _, clean = model.run_with_trace(IDS)  # every activation: resume can start anywhere
    edits = {edited: EDITS[edited]}
    full_logits, full_trace = model.run_with_trace(IDS, names=names, edits=edits)
    blocks = count_blocks(model, monkeypatch)
    logits, trace = model.run_with_trace(IDS, names=names, edits=edits, resume=clean)
    assert relative_error(logits, full_logits) <= SAME
    for key in names:
        assert relative_error(trace[key], full_trace[key]) <= SAME, key
    first = model._earliest(edits)
    assert blocks == list(range(first[0] + first[1], 4)), (edited, blocks)  # layers below the edit are skipped
    assert relative_error(model.forward(IDS, edits=edits, resume=clean, logits_at=-1), full_logits[:, -1]) <= SAME


def test_resume_without_the_activation_falls_back_to_a_full_run(model):
    _, partial = model.run_with_trace(IDS, names=["blocks.0.hook_resid_pre"])
    edits = {"blocks.2.attn.hook_z": EDITS["blocks.2.attn.hook_z"]}
    assert relative_error(model.forward(IDS, edits=edits, resume=partial), model.forward(IDS, edits=edits)) <= SAME


@pytest.mark.parametrize("call, message", [
    (lambda m, t: m.forward(IDS[:, ::-1], edits={"blocks.2.hook_resid_pre": lambda x: x}, resume=t),
     "^resume is the trace of a run on other token ids than these$"),
    (lambda m, t: m.forward(IDS, edits={"blocks.2.hook_resid_pre": lambda x: x}, resume={"a": 1}),
     "^resume must be the Trace of a run on the same ids, got dict$"),
    (lambda m, t: m.run_from("blocks.2.ln1.hook_scale", t["blocks.2.hook_resid_pre"]), "can start from"),
    (lambda m, t: m.run_from("blocks.9.hook_resid_pre", t["blocks.2.hook_resid_pre"]), "can start from"),
    (lambda m, t: m.run_from("blocks.2.hook_resid_pre", t["blocks.2.hook_resid_pre"][0]), r"shaped \[batch, seq, 16\]"),
    (lambda m, t: m.run_from("blocks.2.hook_resid_pre", t["blocks.2.hook_resid_pre"].astype(np.float32)),
     "convert it explicitly"),
    (lambda m, t: m.run_from("blocks.2.hook_resid_pre", t["blocks.2.hook_resid_pre"] * np.nan), "NaN or inf"),
    (lambda m, t: m.run_from("blocks.2.hook_resid_pre", t["blocks.2.hook_resid_pre"], names=["blocks.1.hook_z"]),
     "unknown activation"),
    (lambda m, t: m.run_from("blocks.2.hook_resid_pre", t["blocks.2.hook_resid_pre"], names=["blocks.1.attn.hook_z"]),
     "does not compute"),
    (lambda m, t: m.run_from("blocks.2.hook_resid_mid", t["blocks.2.hook_resid_mid"],
                             edits={"blocks.2.attn.hook_z": lambda x: x}), "does not compute"),
    (lambda m, t: m.forward(IDS, logits_at=9), "logits_at 9 is outside the 9 positions"),
    (lambda m, t: m.forward(IDS, logits_at=1.5), "logits_at"),
])
def test_bad_resume_arguments(model, call, message):
    _, trace = model.run_with_trace(IDS)
    with pytest.raises(InputError, match=message):
        call(model, trace)


def test_resume_of_one_prompt_returns_what_a_full_run_of_it_does(model):
    """1-D ids through ``resume=``: the logits come back [T, vocab] (or [vocab] at one position), as unresumed."""
    _, clean = model.run_with_trace(IDS[0])
    edits = {"blocks.2.attn.hook_z": EDITS["blocks.2.attn.hook_z"]}
    for at in (None, -1):
        full = model.forward(IDS[0], edits=edits, logits_at=at)
        resumed = model.forward(IDS[0], edits=edits, resume=clean, logits_at=at)
        assert resumed.shape == full.shape == ((9, model.config.d_vocab) if at is None else (model.config.d_vocab,))
        assert relative_error(resumed, full) <= SAME


def test_trace_carries_its_ids(model):
    _, trace = model.run_with_trace(IDS[0], names=["blocks.0.hook_resid_pre"])
    assert trace.ids.shape == (1, 9) and np.array_equal(trace.ids[0], IDS[0]) and not trace.ids.flags.writeable
    assert model.run_from("blocks.1.hook_resid_pre", model.run_with_trace(IDS)[1]["blocks.1.hook_resid_pre"])[1].ids is None


def test_several_edits_resume_from_the_earliest(model):
    _, clean = model.run_with_trace(IDS)
    edits = {"blocks.3.hook_resid_pre": EDITS["blocks.1.hook_resid_pre"], "blocks.1.mlp.hook_post": EDITS["blocks.1.mlp.hook_post"]}
    assert model._earliest(edits) == (1, 1)
    assert relative_error(model.forward(IDS, edits=edits, resume=clean), model.forward(IDS, edits=edits)) <= SAME


def test_trace_ids_are_a_copy(model):
    ids = IDS.copy()
    _, trace = model.run_with_trace(ids, names=["blocks.1.hook_resid_pre"])
    ids[0, 0] = (ids[0, 0] + 1) % 53  # the caller reuses its array
    assert trace.ids[0, 0] != ids[0, 0]
    with pytest.raises(InputError, match="other token ids"):
        model.forward(ids, edits={"blocks.1.hook_resid_pre": lambda x: x}, resume=trace)
