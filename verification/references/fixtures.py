"""Small random GPT-Neo and GPT-2 checkpoints written with NumPy + safetensors only (no torch needed).

Used by the test suite and exported so other implementations can build the same fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from refimpl.oracle.tokenizer_files import declare_vocabulary


FAMILIES = ("gpt_neo", "gpt2")  # the families every family-agnostic test runs on


def gpt_neo_config(vocab=61, d_model=16, n_layers=2, n_heads=2, window=4, n_ctx=32, d_mlp=None,
                   kinds=None, **extra) -> dict:
    """A Hugging Face GPT-Neo ``config.json`` dict; ``kinds`` lists "global"/"local" per layer."""
    kinds = kinds or [("global", "local")[i % 2] for i in range(n_layers)]
    config = {
        "model_type": "gpt_neo",
        "architectures": ["GPTNeoForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": d_model,
        "num_layers": n_layers,
        "num_heads": n_heads,
        "attention_types": [[[kind], 1] for kind in kinds],
        "window_size": window,
        "max_position_embeddings": n_ctx,
        "intermediate_size": d_mlp,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "bos_token_id": vocab - 1,
        "eos_token_id": vocab - 1,
    }
    config.update(extra)
    return config


def gpt2_config(vocab=61, d_model=16, n_layers=2, n_heads=2, n_ctx=32, d_mlp=None, **extra) -> dict:
    """A Hugging Face GPT-2 ``config.json`` dict (``n_inner`` null means 4 d_model)."""
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": vocab,
        "n_embd": d_model,
        "n_layer": n_layers,
        "n_head": n_heads,
        "n_positions": n_ctx,
        "n_ctx": n_ctx,
        "n_inner": d_mlp,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": True,
        "bos_token_id": vocab - 1,
        "eos_token_id": vocab - 1,
    }
    config.update(extra)
    return config


def family_config(family: str, **kwargs) -> dict:
    """``gpt_neo_config`` or ``gpt2_config`` by family name (GPT-2 ignores ``window`` and ``kinds``)."""
    if family == "gpt2":
        kwargs.pop("window", None), kwargs.pop("kinds", None)
        return gpt2_config(**kwargs)
    return gpt_neo_config(**kwargs)


def random_tensors(config: dict, seed: int = 0, scale: float = 0.2) -> dict[str, np.ndarray]:
    """Random float64 parameters under Hugging Face keys (``transformer.`` prefix), LN gains near 1 and every
    bias non-zero; GPT-Neo or GPT-2 keys by the config's ``model_type``."""
    if config.get("model_type") == "gpt2":
        return random_gpt2_tensors(config, seed, scale)
    rng = np.random.default_rng(seed)
    d, V, L = config["hidden_size"], config["vocab_size"], config["num_layers"]
    m = config.get("intermediate_size") or 4 * d

    def normal(*shape, s=scale):
        return rng.normal(0.0, s, size=shape)

    t = {"transformer.wte.weight": normal(V, d), "transformer.wpe.weight": normal(config["max_position_embeddings"], d),
         "transformer.ln_f.weight": 1 + normal(d, s=0.3), "transformer.ln_f.bias": normal(d)}
    for l in range(L):
        p = f"transformer.h.{l}."
        t.update({
            p + "ln_1.weight": 1 + normal(d, s=0.3), p + "ln_1.bias": normal(d),
            p + "attn.attention.q_proj.weight": normal(d, d), p + "attn.attention.k_proj.weight": normal(d, d),
            p + "attn.attention.v_proj.weight": normal(d, d), p + "attn.attention.out_proj.weight": normal(d, d),
            p + "attn.attention.out_proj.bias": normal(d),
            p + "ln_2.weight": 1 + normal(d, s=0.3), p + "ln_2.bias": normal(d),
            p + "mlp.c_fc.weight": normal(m, d), p + "mlp.c_fc.bias": normal(m),
            p + "mlp.c_proj.weight": normal(d, m), p + "mlp.c_proj.bias": normal(d),
        })
    return t


def random_gpt2_tensors(config: dict, seed: int = 0, scale: float = 0.2) -> dict[str, np.ndarray]:
    """Random float64 GPT-2 parameters (Conv1D ``[in, out]``, fused ``c_attn`` with q/k/v biases), LN gains near 1."""
    rng = np.random.default_rng(seed)
    d, V, L = config["n_embd"], config["vocab_size"], config["n_layer"]
    m = config.get("n_inner") or 4 * d

    def normal(*shape, s=scale):
        return rng.normal(0.0, s, size=shape)

    t = {"transformer.wte.weight": normal(V, d), "transformer.wpe.weight": normal(config["n_positions"], d),
         "transformer.ln_f.weight": 1 + normal(d, s=0.3), "transformer.ln_f.bias": normal(d)}
    for l in range(L):
        p = f"transformer.h.{l}."
        t.update({
            p + "ln_1.weight": 1 + normal(d, s=0.3), p + "ln_1.bias": normal(d),
            p + "attn.c_attn.weight": normal(d, 3 * d), p + "attn.c_attn.bias": normal(3 * d),
            p + "attn.c_proj.weight": normal(d, d), p + "attn.c_proj.bias": normal(d),
            p + "ln_2.weight": 1 + normal(d, s=0.3), p + "ln_2.bias": normal(d),
            p + "mlp.c_fc.weight": normal(d, m), p + "mlp.c_fc.bias": normal(m),
            p + "mlp.c_proj.weight": normal(m, d), p + "mlp.c_proj.bias": normal(d),
        })
    if config.get("tie_word_embeddings") is False:
        t["lm_head.weight"] = normal(V, d)
    return t


def write_checkpoint(folder: str | Path, config: dict, tensors: dict[str, np.ndarray],
                     dtype: str = "float32", shards: int = 1) -> Path:
    """Write ``config.json``, the tensors as safetensors (``shards`` > 1 writes a sharded index) and the
    declaration that the model uses GPT-2's vocabulary (``refimpl.oracle.tokenizer_files.declare_vocabulary``).

    ``dtype`` is "float64", "float32", "float16" or "bfloat16" (bfloat16 rounded to nearest even).
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    declare_vocabulary(folder)
    if dtype == "bfloat16":
        stored = {k: float32_to_bfloat16_bits(v) for k, v in tensors.items()}
        stored_dtype = "BF16"
    else:
        stored = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in tensors.items()}
        stored_dtype = None
    keys = sorted(stored)
    groups = [keys[i::shards] for i in range(shards)]
    weight_map = {}
    for i, group in enumerate(groups):
        name = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        if stored_dtype:
            write_raw_safetensors(folder / name, {k: (stored_dtype, stored[k]) for k in group})
        else:
            save_file({k: stored[k] for k in group}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in group})
    if shards > 1:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def float32_to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """Round float values to bfloat16 (nearest, ties to even) and return the raw uint16 patterns."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def write_raw_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """Write safetensors with explicit dtype labels (numpy has no bfloat16, so BF16 goes in as uint16)."""
    header, offset, blobs = {}, 0, []
    for name, (label, array) in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": label, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def small_model(folder: str | Path, dtype: str = "float64", seed: int = 5, family: str = "gpt_neo"):
    """The tests' small random model (3 layers of 2 heads, d_model 16, d_mlp 24, vocabulary 61; GPT-Neo with
    window 4, or GPT-2), written to ``folder`` and loaded, both in ``dtype``."""
    import refimpl

    config = family_config(family, vocab=61, d_model=16, n_layers=3, n_heads=2, window=4, d_mlp=24)
    return refimpl.load(write_checkpoint(folder, config, random_tensors(config, seed=seed), dtype=dtype), dtype=dtype)


def exactly(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern that matches ``message`` whole and literally."""
    import re

    return f"^{re.escape(message)}$"
