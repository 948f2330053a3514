"""TransformerLens 4.x (``TransformerBridge``) as a peer of the oracle.

The bridge is booted with ``TransformerBridge.boot_transformers(model)`` (a local Hugging Face folder or
a hub id; offline caches work with ``HF_HUB_OFFLINE=1``). Raw: the checkpoint's own weights, as booted.
Processed: ``enable_compatibility_mode()`` with its defaults, i.e. HookedTransformer's load-time
processing (fold_ln, center_writing_weights, center_unembed, fold_value_biases).

Features and path patching are written the way a TransformerLens user writes them: from ``bridge.W_V``,
``bridge.W_O``, ``bridge.W_U`` and with ``run_with_cache`` / ``run_with_hooks``. GPT-Neo's attention is
the wrapped Hugging Face module (plain ``AttentionBridge``), which cannot expose ``attn.hook_result``
(``set_use_attn_result(True)`` raises for it), so a head's output is ``hook_z[..., h, :] @ W_O[l, h]``.

transformers' GPT-Neo attention casts queries and keys to float32 even in a float64 model; as in
``verification.peers.torch_peer`` the peer runs inside ``exact_attention()`` (``neutralise_cast=True``) so that a
float64 comparison measures TransformerLens, not that cast.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np

from verification.peers.base import Peer, PeerError, as_numpy

# our name -> (bridge property, per-layer?) for the weights a user reads off the bridge
_STACKED = {"attn.W_Q": "W_Q", "attn.W_K": "W_K", "attn.W_V": "W_V", "attn.W_O": "W_O", "attn.b_Q": "b_Q",
            "attn.b_K": "b_K", "attn.b_V": "b_V", "attn.b_O": "b_O", "mlp.W_in": "W_in", "mlp.b_in": "b_in",
            "mlp.W_out": "W_out", "mlp.b_out": "b_out"}


@contextlib.contextmanager
def float64_processing():
    """Within this block TransformerLens' ``ProcessWeights.process_weights`` keeps float64 tensors in
    float64: its "upcast to float32" (``v.dtype != torch.float32`` -> ``v.float()``) is also applied to
    float64 weights, rounding them to float32 and back; a ``torch`` proxy whose ``float32`` is
    ``float64`` makes that branch a no-op (same technique as ``torch_peer.exact_attention``)."""
    from transformer_lens import weight_processing

    from verification.peers.torch_peer import float32_means_float64

    with float32_means_float64(weight_processing):
        yield


def import_bridge():
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as exc:
        raise PeerError(f"the transformer-lens peer needs TransformerLens 4.x: pip install -e '.[tl]' ({exc})") from None
    return TransformerBridge


class TransformerLensPeer(Peer):
    name = "transformer-lens"

    def __init__(self, source: str, dtype: str = "float64", processed: bool = False,
                 mutate: Callable | None = None, neutralise_cast: bool = True, exact_processing: bool = False):
        """``mutate(bridge)``, if given, edits the booted bridge's Hugging Face modules in place before any
        processing (used by the meta-tests to plant known bugs). ``exact_processing``: run the weight
        processing inside ``float64_processing()`` (TransformerLens 4.3 otherwise rounds float64 weights
        to float32 while processing them)."""
        import torch

        TransformerBridge = import_bridge()
        self.source, self.dtype, self.processed = str(source), dtype, processed
        self.neutralise_cast = neutralise_cast
        try:
            self.bridge = TransformerBridge.boot_transformers(self.source, dtype=getattr(torch, dtype), device="cpu")
        except Exception as exc:  # noqa: BLE001 - report any boot failure as one line
            raise PeerError(f"TransformerBridge.boot_transformers({self.source!r}) failed: "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        self.bridge.eval()
        if mutate is not None:
            with torch.no_grad():
                mutate(self.bridge)
        self.exact_processing = bool(processed and exact_processing)
        if processed:
            with float64_processing() if self.exact_processing else contextlib.nullcontext():
                self.bridge.enable_compatibility_mode(disable_warnings=True)
            self.processing = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
        cfg = self.bridge.cfg
        self.n_layers, self.n_heads = cfg.n_layers, cfg.n_heads
        self.notes = ("TransformerBridge.boot_transformers" + (" + enable_compatibility_mode()" if processed else "")
                      + (", transformers' float32 q/k cast neutralised" if neutralise_cast else "")
                      + (", TransformerLens' float32 round trip in process_weights neutralised"
                         if self.exact_processing else ""),)

    def snippet_constructor(self) -> str:
        extra = ", exact_processing=True" if self.exact_processing else ""
        return f"TransformerLensPeer({self.source!r}, dtype={self.dtype!r}, processed={self.processed}{extra})"

    def _context(self):
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        if self.neutralise_cast:
            from verification.peers.torch_peer import exact_attention

            stack.enter_context(exact_attention())
        return stack

    # ------------------------------------------------------------------ queries
    def activations(self, ids):
        import torch

        with self._context():
            logits, cache = self.bridge.run_with_cache(torch.as_tensor(np.atleast_2d(ids)))
        out = {name: as_numpy(cache[name]) for name in cache.keys()}
        out["logits"] = as_numpy(logits)
        return out

    def weights(self):
        b = self.bridge
        out = {"embed.W_E": as_numpy(b.W_E), "pos_embed.W_pos": as_numpy(b.W_pos),
               "unembed.W_U": as_numpy(b.W_U), "ln_final.w": as_numpy(b.ln_final.weight),
               "ln_final.b": as_numpy(b.ln_final.bias)}
        for ours, prop in [("unembed.b_U", "b_U")] + list(_STACKED.items()):
            try:
                value = getattr(b, prop)
            except AttributeError:  # a bias-free projection (GPT-Neo's q/k/v before folding)
                value = None
            if value is not None and ours == "unembed.b_U":
                out[ours] = as_numpy(value)
            elif value is not None:
                for l in range(self.n_layers):
                    out[f"blocks.{l}.{ours}"] = as_numpy(value[l])
        for l, block in enumerate(b.blocks):
            out[f"blocks.{l}.ln1.w"], out[f"blocks.{l}.ln1.b"] = as_numpy(block.ln1.weight), as_numpy(block.ln1.bias)
            out[f"blocks.{l}.ln2.w"], out[f"blocks.{l}.ln2.b"] = as_numpy(block.ln2.weight), as_numpy(block.ln2.bias)
        return out

    def features(self, n):
        # what a TransformerLens user writes: W_V @ W_O @ W_U @ n, per head, from the bridge's own weights
        import torch

        b = self.bridge
        with torch.no_grad():
            n_t = torch.tensor(np.array(n), dtype=b.W_U.dtype)
            u = b.W_U @ n_t                                                   # [d_model]
            F = torch.einsum("lhdk,lhke,e->lhd", b.W_V, b.W_O, u)             # [L, H, d_model]
        return as_numpy(F)

    def path_patching(self, clean, corrupt, n):
        # the authors' direct-path patching with TransformerLens hooks: per head, add
        # (z_corrupt - z_clean)[..., h, :] @ W_O[l, h] to the final residual and let ln_final re-apply
        import torch

        b = self.bridge
        clean, corrupt = torch.as_tensor(np.atleast_2d(clean)), torch.as_tensor(np.atleast_2d(corrupt))
        last = f"blocks.{self.n_layers - 1}.hook_resid_post"
        z_names = [f"blocks.{l}.attn.hook_z" for l in range(self.n_layers)]
        with self._context():
            n_t = torch.tensor(np.array(n), dtype=b.W_U.dtype)
            clean_logits, clean_cache = b.run_with_cache(clean, names_filter=lambda name: name in z_names)
            _, corrupt_cache = b.run_with_cache(corrupt, names_filter=lambda name: name in z_names)
            clean_score = clean_logits[:, -1] @ n_t
            W_O = b.W_O
            out = np.zeros((self.n_layers, self.n_heads))
            for l in range(self.n_layers):
                dz = corrupt_cache[z_names[l]] - clean_cache[z_names[l]]            # [B, T, H, dh]
                for h in range(self.n_heads):
                    delta = dz[:, :, h] @ W_O[l, h]                                # [B, T, d_model]

                    def add_delta(resid, hook, delta=delta):
                        return resid + delta

                    patched = b.run_with_hooks(clean, fwd_hooks=[(last, add_delta)])[:, -1] @ n_t
                    out[l, h] = float((clean_score - patched).mean())
        return out
