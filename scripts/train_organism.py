"""Train the model organism: a small GPT-Neo (or GPT-2) on the generated gendered-pronoun world (development tool).

Uses transformers' GPTNeoForCausalLM / GPT2LMHeadModel and torch==2.13.0 on the CPU; fixed seeds. Writes a
Hugging Face directory (config.json + float16 model.safetensors) that the oracle loads by name.

    python scripts/train_organism.py                  # refimpl/models/organism (GPT-Neo), ~9 minutes on 2 cores
    python scripts/train_organism.py --family gpt2    # refimpl/models/organism-gpt2, the same world and shape
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from refimpl.organism import world as organism  # noqa: E402
from refimpl.oracle.tokenizer import gpt2_tokenizer  # noqa: E402
from refimpl.oracle.tokenizer_files import declare_vocabulary  # noqa: E402

ARCHITECTURE = dict(  # GPT-Neo shape of the organism
    vocab_size=50257, hidden_size=64, num_layers=4, num_heads=4,
    attention_types=[[["global", "local"], 2]], window_size=4, max_position_embeddings=64,
    intermediate_size=256, activation_function="gelu_new",
)


GPT2_ARCHITECTURE = dict(  # the same shape as GPT-2 (every layer global, attention scaled by 1/sqrt(d_head))
    vocab_size=50257, n_embd=64, n_layer=4, n_head=4, n_positions=64, n_inner=256, activation_function="gelu_new",
)
OUT = {"gpt_neo": "organism", "gpt2": "organism-gpt2"}


def token_stream(seed: int, n_documents: int) -> np.ndarray:
    """All training documents, tokenized and concatenated (each starts with <|endoftext|>)."""
    tok = gpt2_tokenizer()
    ids: list[int] = []
    for doc in organism.generate_corpus(seed=seed, n_documents=n_documents):
        ids.extend(tok.encode(doc))
    return np.array(ids, dtype=np.int64)


def answer_token_ids() -> list[int]:
    """Tokens that carry the world's rules: pronouns, occupations, gender words and the names."""
    tok = gpt2_tokenizer()
    words = [*organism.SUBJECT, *organism.OBJECT, *organism.GRAMMATICAL, *organism.STEREOTYPED,
             " She", " He", " herself", " himself", " woman", " man"]
    words += [" " + n for n in organism.MALE_NAMES + organism.FEMALE_NAMES]
    return [tok.single_token_id(w) for w in words]


def sampled_lm_loss(model, batch, answers, sample_rate: float, generator):
    """Next-token cross-entropy on every position whose target is an answer token, plus a random
    ``sample_rate`` share of the other positions (an unbiased sample of the plain LM loss there).

    The 50257-way softmax dominates the cost of a step; computing it on ~1/5 of the positions makes
    a step ~4x cheaper, so the model sees ~4x more text in the same time.
    """
    import torch
    import torch.nn.functional as F

    hidden = model.transformer(batch).last_hidden_state[:, :-1]  # [B, T-1, d]
    targets = batch[:, 1:]
    keep = answers[targets] | (torch.rand(targets.shape, generator=generator) < sample_rate)
    logits = hidden[keep] @ model.transformer.wte.weight.T  # tied unembedding
    return F.cross_entropy(logits, targets[keep])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(OUT), default="gpt_neo")
    parser.add_argument("--out", type=Path, default=None, help="default: refimpl/models/<organism name of the family>")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--documents", type=int, default=40000)
    parser.add_argument("--steps", type=int, default=1700)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sample-rate", type=float, default=0.125,
                        help="share of ordinary positions whose next-token loss is computed each step "
                             "(answer positions always are); 1.0 is the plain LM loss")
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM

    args.out = args.out or REPO / "refimpl" / "models" / OUT[args.family]
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    stream = torch.as_tensor(token_stream(args.seed, args.documents))
    if args.family == "gpt2":
        block = GPT2_ARCHITECTURE["n_positions"]
        config = GPT2Config(**GPT2_ARCHITECTURE, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0,
                            bos_token_id=50256, eos_token_id=50256)
        kind = GPT2LMHeadModel
    else:
        block = ARCHITECTURE["max_position_embeddings"]
        config = GPTNeoConfig(**ARCHITECTURE, embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0,
                              bos_token_id=50256, eos_token_id=50256)
        kind = GPTNeoForCausalLM
    config._attn_implementation = "eager"
    model = kind(config).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    answers = torch.zeros(config.vocab_size, dtype=torch.bool)
    answers[answer_token_ids()] = True
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    print(f"{len(stream)} training tokens, {sum(p.numel() for p in model.parameters())} parameters", flush=True)
    for step in range(args.steps):
        offsets = torch.randint(0, len(stream) - block - 1, (args.batch,), generator=generator)
        batch = torch.stack([stream[o:o + block] for o in offsets.tolist()])
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step)
        loss = sampled_lm_loss(model, batch, answers, args.sample_rate, generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {lr_at(step):.2e}  "
                  f"{time.perf_counter() - start:6.1f} s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.eval().to(torch.float16).save_pretrained(args.out, safe_serialization=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(train_seconds=round(time.perf_counter() - start, 1), training_tokens=int(len(stream)),
                    final_loss=round(loss.item(), 4), torch=torch.__version__,
                    corpus_sha256=organism.corpus_fingerprint(args.seed, args.documents))
    (args.out / "training.json").write_text(json.dumps(settings, indent=2) + "\n")
    declare_vocabulary(args.out)  # trained on GPT-2's tokenizer, whose files it does not carry
    for extra in ("generation_config.json",):
        (args.out / extra).unlink(missing_ok=True)
    print(f"saved to {args.out} ({sum(p.stat().st_size for p in args.out.iterdir()) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
