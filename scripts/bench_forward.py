"""Benchmark: the oracle vs transformers on the same random-weight GPT-Neo or GPT-2 checkpoint, side by side.

Creates (or reuses) a random checkpoint of a released GPT-Neo or GPT-2 shape with transformers, then runs each
implementation in its own fresh process (so peak RSS is its own) and measures load time, forward time
on a batch of prompts (default 40 x 16 tokens) and peak RSS, and prints the ratios oracle / transformers.

    python scripts/bench_forward.py --shape 1.3B          # the issue's target shape
    python scripts/bench_forward.py --shape 125M --repeat 2
    python scripts/bench_forward.py --shape gpt2-124M     # GPT-2 small (GPT2LMHeadModel)
    python scripts/bench_forward.py --shape 1.3B --before 14ece32   # and the oracle at that commit, alternately
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # d_model, layers, heads (vocab 50257; GPT-Neo: 2048 positions, window 256; GPT-2: 1024 positions)
    "tiny": (64, 4, 4),
    "125M": (768, 12, 12),
    "1.3B": (2048, 24, 16),
    "gpt2-124M": (768, 12, 12),
}


def checkpoint(shape: str, cache: Path) -> Path:
    """A random-weight float32 checkpoint of ``shape`` under ``cache`` (created once with transformers)."""
    from refimpl.oracle.tokenizer_files import declare_vocabulary

    folder = cache / (f"{shape}-random" if shape.startswith("gpt2") else f"gpt-neo-{shape}-random")
    if (folder / "model.safetensors").exists():
        declare_vocabulary(folder)  # a folder cached before the declaration existed
        return folder
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM

    d, layers, heads = SHAPES[shape]
    if shape.startswith("gpt2"):
        kind, config = GPT2LMHeadModel, GPT2Config(vocab_size=50257, n_embd=d, n_layer=layers, n_head=heads,
                                                   n_positions=1024)
    else:
        kind, config = GPTNeoForCausalLM, GPTNeoConfig(
            vocab_size=50257, hidden_size=d, num_layers=layers, num_heads=heads,
            attention_types=[[["global", "local"], layers // 2]], window_size=256,
            max_position_embeddings=2048, intermediate_size=None)
    torch.manual_seed(0)
    print(f"creating a random {shape} checkpoint in {folder} ...", flush=True)
    kind(config).save_pretrained(folder, safe_serialization=True)
    declare_vocabulary(folder)
    return folder


def child(impl: str, folder: str, batch: int, seq: int, out: str) -> None:
    """Runs in a fresh process: load, forward once, report times and peak RSS as JSON on stdout."""
    import numpy as np

    ids = np.random.default_rng(0).integers(0, 50257, size=(batch, seq))
    t0 = time.perf_counter()
    if impl == "oracle":
        root = os.environ.get("BENCH_ORACLE_ROOT", str(REPO))  # --before: another commit's tree
        sys.path.insert(0, root)
        import refimpl

        assert refimpl.__file__.startswith(root), (refimpl.__file__, root)

        model = refimpl.load(folder, dtype="float32")
        t1 = time.perf_counter()
        logits = model.forward(ids)
    else:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32,
                                                     use_safetensors=True).eval()
        t1 = time.perf_counter()
        with torch.no_grad():
            logits = model(torch.as_tensor(ids)).logits.numpy()
    t2 = time.perf_counter()
    np.save(out, logits[:, -1])
    print(json.dumps({"load_s": t1 - t0, "forward_s": t2 - t1, "peak_rss": peak_rss_bytes()}))


def peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM, reset at exec; ru_maxrss is not: it keeps the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(impl: str, folder: Path, batch: int, seq: int, out: Path, root: Path = REPO) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, str(folder), str(batch), str(seq), str(out)]
    env = {**os.environ, "BENCH_ORACLE_ROOT": str(root)}
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=root, env=env)
    if result.returncode:
        raise SystemExit(f"{impl} child failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        impl, folder, batch, seq, out = sys.argv[2:7]
        child(impl, folder, int(batch), int(seq), out)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="125M")
    parser.add_argument("--cache", type=Path, default=REPO / "bench-cache")
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1, help="runs per implementation (best time kept)")
    parser.add_argument("--before", default=None, help="a git ref whose oracle to time too, alternating with this one")
    args = parser.parse_args()
    import numpy as np

    folder = checkpoint(args.shape, args.cache)
    weights_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    with open(folder / "model.safetensors", "rb") as fh:  # warm the page cache so neither pays the disk
        while fh.read(1 << 26):
            pass
    results = {}
    for impl in ("transformers", "oracle") * args.repeat:
        r = measure(impl, folder, args.batch, args.seq, args.cache / f"{impl}-last-logits.npy")
        best = results.get(impl)
        results[impl] = r if best is None else {k: min(r[k], best[k]) for k in r}
    diff = np.abs(np.load(args.cache / "oracle-last-logits.npy") - np.load(args.cache / "transformers-last-logits.npy"))
    o, t = results["oracle"], results["transformers"]
    family = "GPT-2" if args.shape.startswith("gpt2") else "GPT-Neo"
    print(f"{family} {args.shape} shape, random weights, float32; checkpoint {weights_bytes / 1e9:.2f} GB; "
          f"forward on {args.batch} x {args.seq} tokens; {os.cpu_count()} cores")
    print(f"{'':14}{'load s':>10}{'forward s':>12}{'peak RSS GB':>14}{'RSS / weights':>15}")
    for name, r in (("transformers", t), ("oracle", o)):
        print(f"{name:14}{r['load_s']:10.2f}{r['forward_s']:12.2f}{r['peak_rss'] / 1e9:14.2f}"
              f"{r['peak_rss'] / weights_bytes:15.3f}")
    print(f"{'ratio o/t':14}{o['load_s'] / t['load_s']:10.2f}{o['forward_s'] / t['forward_s']:12.3f}"
          f"{o['peak_rss'] / t['peak_rss']:14.3f}")
    print(f"targets (1.3B): load <= 0.5 s, forward ratio <= 1.05, peak RSS <= 1.07 x weights; "
          f"last-token logits max |diff| = {diff.max():.2e} (scale {np.abs(np.load(args.cache / 'transformers-last-logits.npy')).max():.2f})")
    if args.before:
        compare_before(args, folder)


def compare_before(args, folder: Path) -> None:
    """The oracle at ``--before`` and this one, alternately three times each in fresh processes: best forward
    times, their ratio, and whether the last-token logits are bitwise equal."""
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.before], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        roots = {"before": Path(tmp), "after": REPO}
        best = {}
        for _ in range(3):
            for name, root in roots.items():
                r = measure("oracle", folder, args.batch, args.seq, args.cache / f"oracle-{name}.npy", root)
                best[name] = min(best.get(name, r["forward_s"]), r["forward_s"])
    same = np.array_equal(np.load(args.cache / "oracle-before.npy"), np.load(args.cache / "oracle-after.npy"))
    print(f"oracle at {args.before}: forward {best['before']:.2f} s, now {best['after']:.2f} s (best of 3, alternating): "
          f"ratio now / before {best['after'] / best['before']:.3f}; last-token logits bitwise equal: {same}")


if __name__ == "__main__":
    main()
