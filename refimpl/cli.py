"""``obsprop``: observable propagation from the command line.

    obsprop features [--observable subj] [--layernorm ignore|estimate]
    obsprop compare  --observable subj --observable obj
    obsprop scan     [--observable subj] [--top 20]
    obsprop patch    [--observable subj] [--template subj_friend]
    obsprop steer    --head 2.1 [--observable subj] [--multipliers -5 5]
    obsprop demo     [--out DIR]

``--observable`` is a preset (subj, obj, same, diff) or a JSON object such as '{" she": 1, " he": -1}'.
Every command takes --model (default: the bundled organism; a local directory or hub id) and --dtype.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import case_study
from . import experiments as ex
from .analysis import compare_features, feature_norms
from .errors import RefimplError
from .loading import load
from .observables import observable
from .propagation import head_features, ln_input_norms, parse_node
from .records import head_table
from .scan import scan_virtual_heads


def _fail(message: str):
    """A clear error for a bad argument: printed to stderr, exit status 2 (like argparse)."""
    print(f"obsprop: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _observable(model, text: str):
    if text in case_study.OBSERVABLES:
        return observable(model, case_study.OBSERVABLES[text], text)
    try:
        spec = json.loads(text)
    except json.JSONDecodeError:
        _fail(f"--observable must be one of {sorted(case_study.OBSERVABLES)} or a JSON object "
              f"like '{{\" she\": 1, \" he\": -1}}', got {text!r}")
    if not isinstance(spec, dict):
        _fail(f"--observable JSON must be an object of token: weight, got {text!r}")
    return observable(model, {int(k) if k.isdigit() else k: v for k, v in spec.items()})


def _prompts(model, observable_name: str, template: str | None):
    key = template or {"subj": "subj_friend", "obj": "obj_love", "same": "occupation", "diff": "occupation"}.get(
        observable_name, "subj_friend")
    if key not in case_study.world.TEMPLATES:
        _fail(f"unknown --template {key!r}; choose from {sorted(case_study.world.TEMPLATES)}")
    female = case_study.prompt_ids(model, key, case_study.world.PAPER_FEMALE)
    male = case_study.prompt_ids(model, key, case_study.world.PAPER_MALE)
    return female, male


def _emit(table, args) -> None:
    print(table.to_markdown())
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        table.to_csv(Path(args.out) / f"{args.command}.csv")
        table.to_json(Path(args.out) / f"{args.command}.json")
        print(f"\nwritten: {Path(args.out) / args.command}.csv and .json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="obsprop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF directory, hub id, or 'organism' (default)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    sub = parser.add_subparsers(dest="command", required=True)
    features = sub.add_parser("features", help="feature norms of every head")
    features.add_argument("--observable", default="subj")
    features.add_argument("--layernorm", default="ignore", choices=["ignore", "estimate"])
    features.add_argument("--top", type=int, default=10)
    compare = sub.add_parser("compare", help="cosine and couplings between two observables' features")
    compare.add_argument("--observable", action="append", required=True)
    compare.add_argument("--top", type=int, default=10)
    scan = sub.add_parser("scan", help="all length-2 virtual heads")
    scan.add_argument("--observable", default="subj")
    scan.add_argument("--top", type=int, default=20)
    patch = sub.add_parser("patch", help="path patching per head (female clean, male corrupted)")
    patch.add_argument("--observable", default="subj")
    patch.add_argument("--template", default=None)
    patch.add_argument("--top", type=int, default=10)
    steer = sub.add_parser("steer", help="add k * (a head's feature) before its layer and measure")
    steer.add_argument("--head", required=True, help="layer.head, e.g. 2.1")
    steer.add_argument("--observable", default="subj")
    steer.add_argument("--template", default=None)
    steer.add_argument("--position", type=int, default=None, help="token index (default: largest attribution)")
    steer.add_argument("--multipliers", type=float, nargs="+", default=[-5.0, 5.0])
    demo = sub.add_parser("demo", help="the whole case study: tables, figures, summary.md")
    demo.add_argument("--out", default="obsprop-demo")
    demo.add_argument("--no-figures", action="store_true")
    for p in (features, compare, scan, patch, steer):
        p.add_argument("--out", default=None, help="folder for CSV and JSON")
    args = parser.parse_args(argv)
    for name in ("top",):
        if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
            parser.error(f"--{name} must be at least 1")
    try:
        model = load(args.model, dtype=args.dtype)
        if args.command == "features":
            obs = _observable(model, args.observable)
            norms = None
            if args.layernorm == "estimate":
                female, male = _prompts(model, args.observable, None)
                norms = ln_input_norms(model, np.concatenate([female, male]))
            values = feature_norms(head_features(model, obs, args.layernorm, norms=norms))
            table = head_table(values, "norm")
            table.rows = table.rows[:args.top]
            _emit(table, args)
        elif args.command == "compare":
            if len(args.observable) != 2:
                parser.error("compare needs exactly two --observable")
            a, b = (_observable(model, o) for o in args.observable)
            table = compare_features(head_features(model, a), head_features(model, b))
            table.rows = table.rows[:args.top]
            _emit(table, args)
        elif args.command == "scan":
            _emit(scan_virtual_heads(model, _observable(model, args.observable), top_k=args.top), args)
        elif args.command == "patch":
            obs = _observable(model, args.observable)
            female, male = _prompts(model, args.observable, args.template)
            table = head_table(ex.path_patch_heads(model, female, male, obs), "clean_minus_patched")
            table.rows = table.rows[:args.top]
            _emit(table, args)
        elif args.command == "steer":
            node = parse_node(model, args.head)
            if node.kind != "attn":
                parser.error("--head must name an attention head, e.g. 2.1")
            obs = _observable(model, args.observable)
            female, male = _prompts(model, args.observable, args.template)
            ids = np.concatenate([female, male])
            position = args.position
            if position is None:
                _, per_position = ex.direct_logit_attribution(model, ids, obs)
                position = int(np.argmax(np.abs(per_position[node.layer, node.head])))
            vector = head_features(model, obs)[node.layer, node.head]
            _emit(ex.steer(model, ids, {args.observable: obs}, f"blocks.{node.layer}.hook_resid_pre", position,
                           vector, args.multipliers), args)
        elif args.command == "demo":
            case_study.run_demo(model, args.out, figures=not args.no_figures)
    except RefimplError as exc:
        print(f"obsprop: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
