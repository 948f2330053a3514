"""transformers' GPTNeoForCausalLM or GPT2LMHeadModel as a peer (wraps ``verification.peers.torch_peer``).

Activations: the residual stream (every block input and the last block's output) and the logits.
Features and path patching are written against the Hugging Face module and its state dict in the
column convention of the authors' code (a head's value rows and output columns, ``wte``: ``v_proj`` /
``out_proj`` for GPT-Neo, the value block of ``c_attn`` / ``c_proj`` for GPT-2), with PyTorch hooks on the
output projection (the merged heads before it) and ``ln_f``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from verification.peers.base import Peer, as_numpy


class TransformersPeer(Peer):
    name = "transformers"

    def __init__(self, folder: str | Path, dtype: str = "float64"):
        from verification.peers.torch_peer import load_peer

        self.folder, self.dtype = str(folder), dtype
        self.model = load_peer(folder, dtype)
        cfg = self.model.config
        self.n_layers, self.n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
        self.d_head = cfg.hidden_size // cfg.num_attention_heads

    def snippet_constructor(self) -> str:
        return f"TransformersPeer({self.folder!r}, dtype={self.dtype!r})"

    def activations(self, ids):
        from verification.peers.torch_peer import peer_forward

        logits, hidden = peer_forward(self.model, ids)
        out = {f"blocks.{l}.hook_resid_pre": h for l, h in enumerate(hidden[:-1])}
        out[f"blocks.{self.n_layers - 1}.hook_resid_post"] = hidden[-1]
        out["logits"] = logits
        return out

    def features(self, n):
        import torch

        W_U = self.model.get_output_embeddings().weight.detach()  # [V, d]: logits = W_U x
        u = W_U.T @ torch.tensor(np.array(n), dtype=W_U.dtype)  # W_U^T n  [d]
        from verification.peers.torch_peer import head_value_output

        out = np.empty((self.n_layers, self.n_heads, u.shape[0]))
        for l in range(self.n_layers):
            for h in range(self.n_heads):
                W_V, W_O = (w.detach() for w in head_value_output(self.model, l, h))  # [dh, d], [d, dh]
                out[l, h] = as_numpy(W_V.T @ (W_O.T @ u))  # W_OV^T W_U^T n
        return out.astype(self.dtype)

    def _head_inputs(self, ids):
        """The merged per-head values entering out_proj of every layer: [L] x [B, T, H*dh]."""
        import torch

        from verification.peers.torch_peer import exact_attention, output_projection

        store, handles = {}, []
        for l in range(self.n_layers):
            handles.append(output_projection(self.model, l)[0].register_forward_pre_hook(
                lambda mod, args, l=l: store.__setitem__(l, args[0].detach().clone())))
        try:
            with torch.no_grad(), exact_attention():
                logits = self.model(torch.as_tensor(ids)).logits
        finally:
            for handle in handles:
                handle.remove()
        return logits, store

    def path_patching(self, clean, corrupt, n):
        import torch

        from verification.peers.torch_peer import exact_attention, output_projection

        clean, corrupt = np.atleast_2d(clean), np.atleast_2d(corrupt)
        n_t = torch.tensor(np.array(n), dtype=getattr(torch, self.dtype))
        clean_logits, z_clean = self._head_inputs(clean)
        _, z_corrupt = self._head_inputs(corrupt)
        clean_score = clean_logits[:, -1] @ n_t
        dh = self.d_head
        out = np.zeros((self.n_layers, self.n_heads))
        ln_f = self.model.transformer.ln_f
        for l in range(self.n_layers):
            O = output_projection(self.model, l)[1]  # [d, H*dh]
            for h in range(self.n_heads):
                cols = slice(h * dh, (h + 1) * dh)
                diff = (z_corrupt[l][..., cols] - z_clean[l][..., cols]) @ O[:, cols].T  # [B, T, d], no bias
                handle = ln_f.register_forward_pre_hook(lambda mod, args, diff=diff: (args[0] + diff,))
                try:
                    with torch.no_grad(), exact_attention():
                        patched = self.model(torch.as_tensor(clean)).logits[:, -1] @ n_t
                finally:
                    handle.remove()
                out[l, h] = float((clean_score - patched).mean())
        return out.astype(self.dtype)
