"""The family seam: what a model family supplies, and the block structure propagation asks about.

A ``Family`` is data plus pure functions: its config parser, its checkpoint conversion (a table checked
against the checkpoint), the checkpoint buffers it ignores, its MLP activation and its ``Structure``.
The runner (``refimpl.oracle.model``) reads only the TransformerLens-layout weights and the ``Config`` a family
produces; propagation, experiments and the verification references ask the ``Structure`` which LayerNorm a
node reads, which residual feeds each LayerNorm and where a head's output re-enters the residual stream,
instead of assuming GPT-Neo's serial block. See ``docs/families.md`` for how GPT-NeoX/Pythia fits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from refimpl.oracle import ops
from refimpl.families.serial_blocks import SerialBlocks
from refimpl.oracle.config import Config


@dataclass(frozen=True)
class Activation:
    """An MLP nonlinearity with its hand-written derivative (both elementwise, complex-step safe)."""

    name: str
    f: Callable[[np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray], np.ndarray]


def _gelu_new_derivative(x: np.ndarray) -> np.ndarray:
    from refimpl.propagation.jacobians import gelu_new_derivative

    return gelu_new_derivative(x)


GELU_NEW = Activation("gelu_new", ops.gelu_new, _gelu_new_derivative)
ACTIVATIONS = {a.name: a for a in (GELU_NEW,)}


SUBLAYERS = ("attn", "mlp")


def _check_kind(kind) -> None:
    """A sublayer kind is "attn" or "mlp"; anything else is a bug of the caller, not a third sublayer."""
    if kind not in SUBLAYERS:
        raise ValueError(f"a sublayer kind is one of {SUBLAYERS}, got {kind!r}")


class SerialStructure:
    """The pre-LN serial block of GPT-Neo and GPT-2:
        resid_mid = resid_pre + attn(ln1(resid_pre)),   resid_post = resid_mid + mlp(ln2(resid_mid)).
    Attention l feeds MLP l; ln_final reads the last block's resid_post."""

    parallel = False

    def layer_norm(self, kind: str, layer: int) -> str:
        """The LayerNorm in front of sublayer ``kind`` ("attn" or "mlp") of ``layer``."""
        _check_kind(kind)
        return f"blocks.{layer}.ln1" if kind == "attn" else f"blocks.{layer}.ln2"

    def ln_inputs(self, n_layers: int) -> dict[str, str]:
        """LayerNorm name -> the residual activation it reads, for every LayerNorm of the model."""
        names = {}
        for layer in range(n_layers):
            names[f"blocks.{layer}.ln1"] = f"blocks.{layer}.hook_resid_pre"
            names[f"blocks.{layer}.ln2"] = f"blocks.{layer}.hook_resid_mid"
        names["ln_final"] = f"blocks.{n_layers - 1}.hook_resid_post"
        return names

    def sublayer_input(self, kind: str, layer: int) -> str:
        """The activation a sublayer reads (its LayerNorm's output)."""
        return self.layer_norm(kind, layer) + ".hook_normalized"

    def head_reentry(self, layer: int) -> str:
        """The residual activation that first holds layer ``layer``'s head outputs (a run started there with
        a changed head output sees the change everywhere downstream)."""
        return f"blocks.{layer}.hook_resid_mid"

    def order(self, kind: str, layer: int) -> tuple[int, int]:
        """A key increasing along the forward pass; sublayer a can feed sublayer b iff order(a) < order(b)."""
        _check_kind(kind)
        return layer, 0 if kind == "attn" else 1


SERIAL = SerialStructure()


@dataclass(frozen=True)
class Family:
    """One model family: everything the runner and propagation need that differs between families."""

    name: str  # the config's model_type
    title: str  # for messages: "GPT-Neo", "GPT-2"
    config_from_dict: Callable[[Mapping], Config]
    convert: Callable[[Mapping[str, tuple[int, ...]], Callable[[str], np.ndarray], Config], dict[str, np.ndarray]]
    ignored_buffer: re.Pattern  # checkpoint keys (prefix stripped) that are buffers, not parameters
    structure: SerialStructure = SERIAL
    blocks: type = SerialBlocks  # the forward maths (embedding, blocks, unembedding) of a loaded model

    def activation(self, config: Config) -> Activation:
        return ACTIVATIONS[config.act_fn]
