"""Benchmark: what the experiments cost, in units of forward passes measured in the same run.

Each measurement runs in a fresh process (so its peak RSS is its own) on the random-weight checkpoint of a
GPT-Neo shape (created once by scripts/bench_forward.py's recipe under bench-cache/), and is printed as a
ratio to a plain forward pass timed in the same run:

* `scripts/reproduce_paper.py` against one 40 x 16 forward (target <= 6 x), and, with --before REF, the
  same script from an earlier commit (its code archived to a temporary folder) in the same run;
* a steering sweep of k multipliers at layer l against k full forwards (target about (L - l) / L);
* activation patching of every head on one prompt pair of 16 tokens against that many full forwards
  (target <= 0.6 x), with peak RSS against the weights (target <= 1.3 x);
* the float64 forward against the float32 one (goal <= 2.2 x).

    python scripts/bench_experiments.py --shape 1.3B [--before b1bc38a]
    python scripts/bench_experiments.py --shape 125M --skip reproduce
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_forward import checkpoint  # noqa: E402

CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, {root!r})
import refimpl
from refimpl import experiments as ex
task, folder = {task!r}, {folder!r}
out = {{}}
model = refimpl.load(folder, dtype={dtype!r})
L, H = model.config.n_layers, model.config.n_heads
rng = np.random.default_rng(0)
if task == "forward":
    ids = rng.integers(0, 50257, size=({batch}, {seq}))
    model.forward(ids[:1, :4])
    t = time.perf_counter(); model.forward(ids); out["forward_s"] = time.perf_counter() - t
elif task == "steer":
    ids = rng.integers(0, 50257, size=(20, 12))
    obs = refimpl.observable(model, {{" she": 1, " he": -1}})
    layer, ks = L // 2, [-2.0, -1.0, 1.0, 2.0]
    v = refimpl.head_features(model, obs)[layer, 0]
    ex.clean_run(model, ids)  # the clean run is shared: not part of the sweep's cost
    t = time.perf_counter(); ex.steer(model, ids, {{"o": obs}}, f"blocks.{{layer}}.hook_resid_pre", 5, v, ks)
    out["sweep_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in ks:
        model.forward(ids)
    out["full_forwards_s"] = time.perf_counter() - t
    out.update(layer=layer, layers=L, k=len(ks))
elif task == "patch":
    clean, corrupt = rng.integers(0, 50257, size=(2, 1, 16))
    obs = refimpl.observable(model, {{" she": 1, " he": -1}})
    model.forward(clean[:, :4])
    t = time.perf_counter()
    for _ in range(3):
        model.forward(clean)
    one = (time.perf_counter() - t) / 3
    t = time.perf_counter(); ex.activation_patch_heads(model, clean, corrupt, obs)
    out["patch_s"] = time.perf_counter() - t
    out.update(one_forward_s=one, heads=L * H)
from bench_forward import peak_rss_bytes
out["peak_rss"] = peak_rss_bytes()
print(json.dumps(out))
"""


def child(task: str, folder: Path, dtype: str = "float32", batch: int = 40, seq: int = 16) -> dict:
    code = CHILD.format(root=str(REPO), task=task, folder=str(folder), dtype=dtype, batch=batch, seq=seq)
    env = dict(os.environ, PYTHONPATH=f"{REPO}:{REPO / 'scripts'}")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"{task} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def reproduce(folder: Path, root: Path) -> dict:
    """Wall time and peak RSS (from /usr/bin/time -v when present) of reproduce_paper.py under ``root``."""
    env = dict(os.environ, PYTHONPATH=str(root))
    command = [sys.executable, str(root / "scripts" / "reproduce_paper.py"), "--model", str(folder)]
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    start = time.perf_counter()
    result = subprocess.run(timer + command, capture_output=True, text=True, env=env, cwd=root)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"reproduce_paper under {root} failed:\n{result.stderr[-3000:]}")
    rss = next((int(line.split()[-1]) * 1024 for line in result.stderr.splitlines()
                if "Maximum resident set size" in line), None)
    return {"seconds": seconds, "peak_rss": rss, "output": result.stdout}


def tables(output: str) -> list[str]:
    """The printed tables without their timing suffixes and the final timing line (to compare runs)."""
    return [line.split("   [")[0] for line in output.splitlines() if line and not line.startswith("ran in")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1.3B", choices=["tiny", "125M", "1.3B"])
    parser.add_argument("--cache", type=Path, default=REPO / "bench-cache")
    parser.add_argument("--before", default=None, help="a git ref whose reproduce_paper.py to time as well")
    parser.add_argument("--skip", nargs="*", default=[], choices=["reproduce", "steer", "patch", "float64"])
    args = parser.parse_args()
    folder = checkpoint(args.shape, args.cache)
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    print(f"GPT-Neo {args.shape} shape, random weights ({weights / 1e9:.2f} GB float32), {os.cpu_count()} cores")
    forward = child("forward", folder)["forward_s"]
    print(f"one forward of 40 x 16 tokens (float32): {forward:.2f} s")
    if "reproduce" not in args.skip and args.shape == "1.3B":
        after = reproduce(folder, REPO)
        rss = f", peak RSS {after['peak_rss'] / 1e9:.2f} GB" if after["peak_rss"] else ""
        print(f"reproduce_paper.py: {after['seconds']:.1f} s = {after['seconds'] / forward:.1f} forwards "
              f"(target <= 6){rss}")
        if args.before:
            with tempfile.TemporaryDirectory() as tmp:
                archive = subprocess.run(["git", "archive", args.before], cwd=REPO, capture_output=True, check=True)
                subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
                before = reproduce(folder, Path(tmp))
            rss = f", peak RSS {before['peak_rss'] / 1e9:.2f} GB" if before["peak_rss"] else ""
            print(f"reproduce_paper.py at {args.before}: {before['seconds']:.1f} s = "
                  f"{before['seconds'] / forward:.1f} forwards{rss}; speed-up {before['seconds'] / after['seconds']:.2f} x")
            same = tables(before["output"]) == tables(after["output"])
            print(f"printed tables identical to the earlier commit's: {same}")
            if not same:
                for old, new in zip(tables(before["output"]), tables(after["output"])):
                    if old != new:
                        print(f"  before: {old}\n  after:  {new}")
    if "steer" not in args.skip:
        s = child("steer", folder)
        expected = (s["layers"] - s["layer"]) / s["layers"]
        print(f"steering sweep, {s['k']} multipliers at layer {s['layer']} of {s['layers']}: {s['sweep_s']:.2f} s vs "
              f"{s['full_forwards_s']:.2f} s for {s['k']} full forwards = {s['sweep_s'] / s['full_forwards_s']:.2f} "
              f"(target about (L - l) / L = {expected:.2f})")
    if "patch" not in args.skip:
        p = child("patch", folder)
        cost = p["patch_s"] / (p["heads"] * p["one_forward_s"])
        print(f"activation patching of all {p['heads']} heads, one pair of 16 tokens: {p['patch_s']:.1f} s = "
              f"{cost:.2f} x {p['heads']} forwards of 1 x 16 ({p['one_forward_s']:.3f} s each; target <= 0.6); "
              f"peak RSS {p['peak_rss'] / 1e9:.2f} GB = {p['peak_rss'] / weights:.2f} x weights (target <= 1.3)")
    if "float64" not in args.skip:
        f64 = child("forward", folder, dtype="float64")["forward_s"]
        print(f"float64 forward of 40 x 16: {f64:.2f} s = {f64 / forward:.2f} x float32 (goal <= 2.2)")


if __name__ == "__main__":
    main()
