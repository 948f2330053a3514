"""``mlp_inputs``: the authors' two points of an MLP node (Section 4.3.4), checked against a batched run's trace,
and its refusals at, below and above every bound (layer, prompt count, position), with their exact messages."""

import re

import numpy as np
import pytest

import refimpl
from refimpl import InputError
from verification.references.fixtures import FAMILIES, family_config, random_tensors, write_checkpoint

NEG = np.array([3, 1, 4, 1, 5, 9, 2])  # 7 tokens: neither 1 nor 2, so a count and a length cannot be confused
POS = np.array([2, 7, 1, 8, 2, 8, 1])
N_LAYERS = 3


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tmp_path_factory):
    config = family_config(request.param, vocab=61, d_model=16, n_layers=N_LAYERS, n_heads=2, window=4, d_mlp=24)
    folder = write_checkpoint(tmp_path_factory.mktemp("mlpin"), config, random_tensors(config, seed=4), dtype="float64")
    return refimpl.load(folder, dtype="float64")


def _batched(model, layer, position):
    """Both prompts in one batch, every activation traced: another route to the same ln_2 outputs."""
    _, trace = model.run_with_trace(np.stack([NEG, POS]))
    x = trace[f"blocks.{layer}.ln2.hook_normalized"]
    return x[0, position], x[1, position]


@pytest.mark.parametrize("layer", [0, N_LAYERS - 1])
@pytest.mark.parametrize("position", [-len(NEG), -1, 0, len(NEG) - 1])
def test_points_are_the_ln2_outputs_of_each_prompt_in_order(model, layer, position):
    x_neg, x_pos = refimpl.mlp_inputs(model, layer, NEG, POS, position)
    ref_neg, ref_pos = _batched(model, layer, position)
    assert x_neg.shape == x_pos.shape == (16,)
    np.testing.assert_array_equal(x_neg, ref_neg)  # same float64 operations, batch rows independent
    np.testing.assert_array_equal(x_pos, ref_pos)
    assert not np.array_equal(x_neg, x_pos)  # the order (negative, positive) is visible


def test_points_accept_one_prompt_as_a_batch_of_one(model):
    a = refimpl.mlp_inputs(model, 1, NEG[None], POS[None])
    b = refimpl.mlp_inputs(model, 1, NEG, POS)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("layer", [-1, N_LAYERS, N_LAYERS + 1, True, 1.0, "1", None])
def test_layer_outside_the_model_is_refused(model, layer):
    message = f"layer must be one of 0..{N_LAYERS - 1}, got {layer!r}"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        refimpl.mlp_inputs(model, layer, NEG, POS)


@pytest.mark.parametrize("side", ["negative_ids", "positive_ids"])
def test_more_than_one_prompt_is_refused_naming_the_side(model, side):
    three = np.stack([NEG, POS, NEG])
    args = (three, POS) if side == "negative_ids" else (NEG, three)
    message = f"{side} must be one prompt ([seq] or [1, seq]), got 3 prompts"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        refimpl.mlp_inputs(model, 1, *args)


@pytest.mark.parametrize("position", [len(NEG), len(NEG) + 1, -len(NEG) - 1])
@pytest.mark.parametrize("side", ["negative_ids", "positive_ids"])
def test_position_outside_the_prompt_is_refused_naming_the_side(model, position, side):
    short = NEG[:len(NEG)]
    longer = np.concatenate([POS, POS])  # the other side is long enough: only `side` is out of range
    args = (short, longer) if side == "negative_ids" else (longer, short)
    message = f"position {position} is outside the {len(NEG)} tokens of {side}"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        refimpl.mlp_inputs(model, 1, *args, position=position)
