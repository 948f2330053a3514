"""transformers' GPTNeoForCausalLM and GPT2LMHeadModel as independent peers of the oracle (needs torch +
transformers).

transformers' ``GPTNeoSelfAttention._attn`` casts query and key to float32 even in a float64 model,
which alone limits agreement to ~1e-9. ``exact_attention()`` neutralises that cast by handing the
module a ``torch`` proxy whose ``float32`` is ``float64``; with it a correct port agrees to ~1e-15.
GPT-2's eager attention has no such cast (``reorder_and_upcast_attn`` would add one; it is off here).
"""

from __future__ import annotations

import contextlib
import types
from pathlib import Path

import numpy as np

from refimpl.oracle.tokenizer_files import declare_vocabulary


def _modeling():
    from transformers.models.gpt_neo import modeling_gpt_neo

    return modeling_gpt_neo


@contextlib.contextmanager
def float32_means_float64(module):
    """Within this block ``module`` sees a ``torch`` whose ``float32`` is ``float64``, so its casts to float32
    keep float64 tensors in float64 (the module's own ``torch`` is restored afterwards)."""
    import torch

    proxy = types.SimpleNamespace(**{name: getattr(torch, name) for name in dir(torch) if not name.startswith("__")})
    proxy.float32 = torch.float64
    original = module.torch
    module.torch = proxy
    try:
        yield
    finally:
        module.torch = original


@contextlib.contextmanager
def exact_attention():
    """Within this block, transformers' GPT-Neo attention keeps float64 queries and keys in float64."""
    with float32_means_float64(_modeling()):
        yield


def hf_config(vocab=99, d_model=32, n_layers=2, n_heads=4, window=7, n_ctx=64, d_mlp=None,
              kinds=None, **extra):
    """A GPTNeoConfig; ``kinds`` is the per-layer list of "global"/"local" (default alternating)."""
    from transformers import GPTNeoConfig

    kinds = kinds or [("global", "local")[i % 2] for i in range(n_layers)]
    attention_types = [[[kind], 1] for kind in kinds]
    return GPTNeoConfig(
        vocab_size=vocab, hidden_size=d_model, num_layers=n_layers, num_heads=n_heads,
        window_size=window, max_position_embeddings=n_ctx, intermediate_size=d_mlp,
        attention_types=attention_types, activation_function="gelu_new",
        embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0,
        bos_token_id=vocab - 1, eos_token_id=vocab - 1, **extra,
    )


def make_random_checkpoint(folder: str | Path, config=None, seed: int = 0, perturb_layernorm: bool = True,
                           dtype: str = "float32", **config_kwargs) -> Path:
    """Save a random GPTNeoForCausalLM (eager attention) as a safetensors HF directory and return it.

    With ``perturb_layernorm`` every LayerNorm gain and bias is moved away from 1 and 0, so tests see them.
    """
    import torch
    from transformers import GPTNeoForCausalLM

    torch.manual_seed(seed)
    config = config or hf_config(**config_kwargs)
    config._attn_implementation = "eager"
    model = GPTNeoForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if perturb_layernorm and ("ln_" in name):
                if name.endswith("weight"):
                    param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=generator))
                else:
                    param.copy_(0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith(".bias"):
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    model = model.to(getattr(torch, dtype))
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    declare_vocabulary(folder)
    return folder


def gpt2_hf_config(vocab=99, d_model=32, n_layers=2, n_heads=4, n_ctx=64, d_mlp=None, **extra):
    """A GPT2Config without dropout."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab, n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_positions=n_ctx,
                      n_inner=d_mlp, activation_function="gelu_new", embd_pdrop=0.0, attn_pdrop=0.0,
                      resid_pdrop=0.0, bos_token_id=vocab - 1, eos_token_id=vocab - 1, **extra)


def make_random_gpt2_checkpoint(folder: str | Path, config=None, seed: int = 0, dtype: str = "float32",
                                **config_kwargs) -> Path:
    """Save a random GPT2LMHeadModel (eager attention) as a safetensors HF directory and return it; every
    LayerNorm gain and bias is moved away from 1 and 0, every bias (q, k, v included) is non-zero, and the
    matrices are 10x transformers' initialisation (std 0.2) so that attention is far from uniform and the
    attention scale matters."""
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    config = config or gpt2_hf_config(**config_kwargs)
    config._attn_implementation = "eager"
    model = GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln_" in name:
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn(param.shape, generator=generator))
            elif name.endswith(".bias"):
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
            else:
                param.mul_(10.0)
    model = model.to(getattr(torch, dtype))
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    declare_vocabulary(folder)
    return folder


def load_peer(folder: str | Path, dtype: str = "float64"):
    """The checkpoint in ``folder`` as transformers' model of its family (GPTNeoForCausalLM or GPT2LMHeadModel)
    with eager attention, in ``dtype``."""
    import torch
    from transformers import AutoConfig, GPT2LMHeadModel, GPTNeoForCausalLM

    kind = {"gpt_neo": GPTNeoForCausalLM, "gpt2": GPT2LMHeadModel}[AutoConfig.from_pretrained(folder).model_type]
    model = kind.from_pretrained(folder, attn_implementation="eager", dtype=getattr(torch, dtype),
                                 use_safetensors=True)  # never unpickle a pytorch_model.bin
    return model.eval()


def peer_forward(model, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits [B, T, V] and the inputs of every block plus the final residual (before ln_f), as numpy."""
    import torch

    ids = torch.as_tensor(np.atleast_2d(ids), dtype=torch.long)
    captured = {}
    handle = model.transformer.ln_f.register_forward_pre_hook(lambda mod, args: captured.update(x=args[0]))
    try:
        with torch.no_grad(), exact_attention():
            out = model(ids, output_hidden_states=True)
    finally:
        handle.remove()
    hidden = [h.numpy() for h in out.hidden_states[:-1]] + [captured["x"].numpy()]
    return out.logits.numpy(), hidden


# ------------------------------------------------------------------ one head's weights in transformers' own modules
# GPT-Neo: nn.Linear [out, in], separate v_proj / out_proj. GPT-2: Conv1D [in, out], fused c_attn (q | k | v).
def head_value_output(peer, layer: int, head: int):
    """(W_v [dh, d], W_o [d, dh]) of one head, column convention (v = W_v x, out = W_o z), from the modules."""
    cfg, dh = peer.config, peer.config.hidden_size // peer.config.num_attention_heads
    rows = slice(head * dh, (head + 1) * dh)
    if cfg.model_type == "gpt2":
        attn, d = peer.transformer.h[layer].attn, cfg.hidden_size
        return attn.c_attn.weight[:, 2 * d + head * dh:2 * d + (head + 1) * dh].T, attn.c_proj.weight[rows].T
    att = peer.transformer.h[layer].attn.attention
    return att.v_proj.weight[rows], att.out_proj.weight[:, rows]


def output_projection(peer, layer: int):
    """(the module whose input is the merged heads z [.., H*dh], its weight O [d, H*dh] in the column convention:
    attention output = O z + b): ``out_proj`` (GPT-Neo) or ``c_proj`` (GPT-2, Conv1D: its weight transposed)."""
    if peer.config.model_type == "gpt2":
        c_proj = peer.transformer.h[layer].attn.c_proj
        return c_proj, c_proj.weight.detach().T
    out_proj = peer.transformer.h[layer].attn.attention.out_proj
    return out_proj, out_proj.weight.detach()
