"""``obsprop``: observable propagation from the command line.

    obsprop features [--observable subj] [--layernorm ignore|estimate|exact]
    obsprop compare  --observable subj --observable obj
    obsprop scan     [--observable subj] [--top 20]
    obsprop patch    [--observable subj] [--template subj_friend]
    obsprop steer    --head 3.0 [--observable subj] [--multipliers -1 1] [--relative]
    obsprop demo     [--out DIR]

--observable is a preset (subj = ' she' - ' he', obj = ' her' - ' him', same = ' actress' - ' actor',
diff = ' nurse' - ' programmer') or a JSON object of token strings and weights, e.g. '{" she": 1, " he": -1}';
a token id is written as "#464" (a string that starts with '#' and has only ASCII digits after it).
--model and --dtype may come before or after the command. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from refimpl.case_study import pipeline as case_study
from refimpl.case_study import prompts as task
from refimpl.organism import world
from refimpl import experiments as ex
from refimpl.propagation.analysis import compare_features, feature_norms
from refimpl.errors import RefimplError
from refimpl.loading import load
from refimpl.propagation.observables import observable
from refimpl.propagation.layernorms import ln_input_norms
from refimpl.propagation.paths import parse_node
from refimpl.propagation.propagate import head_features
from refimpl.records import Table, head_table
from refimpl.propagation.scan import scan_virtual_heads

PRESETS = ", ".join(f"{k} = {observable_text}" for k, observable_text in (
    ("subj", "' she' - ' he'"), ("obj", "' her' - ' him'"), ("same", "' actress' - ' actor'"),
    ("diff", "' nurse' - ' programmer'")))
TEMPLATES = sorted(world.TEMPLATES)


class UsageError(Exception):
    """A bad command-line argument: printed as one line, exit status 2."""


def parse_observable_spec(text: str) -> dict:
    """A preset name or a JSON object; keys "#<ASCII digits>" are token ids, every other key a token string."""
    if text in task.OBSERVABLES:
        return task.OBSERVABLES[text]
    try:
        spec = json.loads(text)
    except json.JSONDecodeError:
        raise UsageError(f"--observable must be a preset ({', '.join(task.OBSERVABLES)}) or a JSON object "
                         f"like '{{\" she\": 1, \" he\": -1}}', got {text!r}") from None
    if not isinstance(spec, dict) or not spec:
        raise UsageError(f"--observable JSON must be a non-empty object of token: weight, got {text!r}")
    out = {}
    for key, weight in spec.items():
        if key.startswith("#") and len(key) > 1 and key[1:].isascii() and key[1:].isdigit():
            out[int(key[1:])] = weight
        else:
            out[key] = weight
    return out


def _observable(model, text: str):
    spec = parse_observable_spec(text)
    return observable(model, spec, text if text in task.OBSERVABLES else None)


def _prompts(model, observable_name: str, template: str | None):
    key = template or task.TASK_TEMPLATE.get(observable_name, "subj_friend")
    female = task.prompt_ids(model, key, world.PAPER_FEMALE)
    male = task.prompt_ids(model, key, world.PAPER_MALE)
    return key, female, male


def _describe(model, obs, **what) -> str:
    parts = [f"model: {model.source} ({model.dtype})", f"observable: {obs.name} = {obs.terms and _terms(obs)}"]
    parts += [f"{k.replace('_', ' ')}: {v}" for k, v in what.items() if v is not None]
    return " | ".join(parts)


def _terms(obs) -> str:
    return " ".join(f"{'+' if w > 0 else '-'}{'' if abs(w) == 1 else f'{abs(w):g}'}{t!r}" for _, t, w in obs.terms)


def _emit(table: Table, args, header: str, total: int | None = None) -> None:
    shown = len(table)
    print(header + (f" | top {shown} of {total}" if total is not None and shown < total else ""))
    print(table.to_markdown())
    if args.out:
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            table.to_csv(out / f"{args.command}.csv")
            table.to_json(out / f"{args.command}.json")
        except OSError as exc:
            raise UsageError(f"cannot write into --out {str(out)!r}: {exc.strerror or exc}") from None
        print(f"\nwritten: {out / args.command}.csv and .json")


def _top(table: Table, n: int) -> Table:
    return Table(table.rows[:n], table.columns)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2 (argparse prints the usage too)
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--model", default=argparse.SUPPRESS,
                        help="local Hugging Face directory, hub id, or 'organism' (default: the bundled organism)")
    common.add_argument("--dtype", default=argparse.SUPPRESS, choices=["float32", "float64"],
                        help="compute dtype (default: float32)")
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="obsprop", description=__doc__, formatter_class=fmt, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    obs_help = f"a preset ({PRESETS}) or a JSON object of token: weight (default: %(default)s)"
    features = sub.add_parser("features", parents=[common], help="feature norms of every head",
                              description="Feature norms |W_OV^T W_U^T n| of every head, largest first.")
    features.add_argument("--observable", default="subj", help=obs_help)
    features.add_argument("--layernorm", default="ignore", choices=["ignore", "estimate", "exact"],
                          help="LayerNorm handling: ignore; estimate (sqrt(d) gamma / |x~| with input norms from the "
                               "paper's prompts of the observable's task); exact (Jacobians at the last token of the "
                               "first female prompt, ln_final at a decision-boundary point between the male and "
                               "female prompts) (default: %(default)s)")
    features.add_argument("--top", type=_positive_int, default=10, help="rows to print (default: %(default)s)")
    compare = sub.add_parser("compare", parents=[common], help="cosine and couplings between two observables",
                             description="Per head: both norms, the cosine and both couplings C(1 -> 2) = "
                                         "y1.y2/|y1|^2, sorted by cosine.")
    compare.add_argument("--observable", action="append", required=True, help="give it twice; " + obs_help[:-17])
    compare.add_argument("--top", type=_positive_int, default=10, help="rows to print (default: %(default)s)")
    scan = sub.add_parser("scan", parents=[common], help="all length-2 virtual heads",
                          description="Feature norms of every length-2 virtual head l1.h1 -> l2.h2, largest first.")
    scan.add_argument("--observable", default="subj", help=obs_help)
    scan.add_argument("--top", type=_positive_int, default=20, help="rows to print (default: %(default)s)")
    patch = sub.add_parser("patch", parents=[common], help="path patching per head",
                           description="The authors' direct-path patching: clean = female prompts, corrupted = "
                                       "male prompts; effect = n.logits(clean) - n.logits(patched), mean over pairs.")
    patch.add_argument("--observable", default="subj", help=obs_help)
    patch.add_argument("--template", default=None, choices=TEMPLATES,
                       help="prompt template (default: the observable's task: subj_friend, obj_love or occupation)")
    patch.add_argument("--full", action="store_true",
                       help="activation patching instead: replace the head's output by its corrupted value and "
                            "let every later layer recompute (the full downstream effect)")
    patch.add_argument("--per-position", action="store_true",
                       help="with --full: patch one position at a time (rows per head and position)")
    patch.add_argument("--top", type=_positive_int, default=10, help="rows to print (default: %(default)s)")
    steer = sub.add_parser("steer", parents=[common], help="add k * (a head's feature) before its layer",
                           description="Add k v (v: the head's feature) to the residual before the head's layer at "
                                       "one token of every prompt; print the mean change of the observable.")
    steer.add_argument("--head", required=True, help="layer.head, e.g. 3.0")
    steer.add_argument("--observable", default="subj", help=obs_help)
    steer.add_argument("--template", default=None, choices=TEMPLATES,
                       help="prompt template (default: the observable's task)")
    steer.add_argument("--position", type=int, default=None,
                       help="token index (default: where the head's direct attribution is largest)")
    steer.add_argument("--multipliers", type=_finite, nargs="+", default=[-1.0, 1.0],
                       help="values of k (default: %(default)s)")
    steer.add_argument("--relative", action="store_true",
                       help="read each multiplier m as k = m x mean |activation| / |v| (so 1 adds a vector as long "
                            "as the activation)")
    demo = sub.add_parser("demo", parents=[common], help="the whole case study: tables, figures, summary.md",
                          description="Every experiment of the paper's case study on the model; writes CSV, JSON, "
                                      "PNG and summary.md (which opens with the claims at a glance).")
    demo.add_argument("--out", default="obsprop-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--no-figures", action="store_true", help="skip the PNG figures (no matplotlib needed)")
    for p in (features, compare, scan, patch, steer):
        p.add_argument("--out", default=None, help="folder for the table as CSV and JSON (default: print only)")
    return parser


def run(args) -> None:
    model = load(getattr(args, "model", None), dtype=getattr(args, "dtype", "float32"))
    cfg = model.config
    heads = cfg.n_layers * cfg.n_heads
    if args.command == "features":
        obs = _observable(model, args.observable)
        key, female, male = _prompts(model, args.observable, None)
        norms = points = None
        if args.layernorm == "estimate":
            norms = ln_input_norms(model, np.concatenate([female, male]))
        elif args.layernorm == "exact":
            points = case_study.exact_layernorm_points(model, obs, female, male)
        values = feature_norms(head_features(model, obs, args.layernorm, norms=norms, points=points))
        header = _describe(model, obs, layernorm=args.layernorm,
                           prompts=None if args.layernorm == "ignore" else f"{key} (10 female, 10 male names)")
        _emit(_top(head_table(values, "norm"), args.top), args, header, heads)
    elif args.command == "compare":
        if len(args.observable) != 2:
            raise UsageError("compare needs exactly two --observable")
        a, b = (_observable(model, o) for o in args.observable)
        table = compare_features(head_features(model, a), head_features(model, b))
        header = f"model: {model.source} ({model.dtype}) | 1 = {a.name} = {_terms(a)} | 2 = {b.name} = {_terms(b)}"
        _emit(_top(table, args.top), args, header + " | layernorm: ignore | sorted by cosine", heads)
    elif args.command == "scan":
        obs = _observable(model, args.observable)
        table = scan_virtual_heads(model, obs, top_k=args.top)
        pairs = heads * heads * (cfg.n_layers - 1) // (2 * cfg.n_layers) if cfg.n_layers > 1 else 0
        _emit(table, args, _describe(model, obs, layernorm="ignore"), pairs)
    elif args.command == "patch":
        obs = _observable(model, args.observable)
        key, female, male = _prompts(model, args.observable, args.template)
        prompts = f"{key} (clean: 10 female, corrupted: 10 male names)"
        if args.per_position and not args.full:
            raise UsageError("--per-position needs --full")
        if not args.full:
            table = head_table(ex.path_patch_heads(model, female, male, obs), "clean_minus_patched")
            _emit(_top(table, args.top), args, _describe(model, obs, prompts=prompts, patching="direct path (authors')"),
                  heads)
        elif not args.per_position:
            table = head_table(ex.activation_patch_heads(model, female, male, obs), "clean_minus_patched")
            _emit(_top(table, args.top), args, _describe(model, obs, prompts=prompts, patching="full (activation)"),
                  heads)
        else:
            effects = ex.activation_patch_heads(model, female, male, obs, per_position=True)
            rows = [{"label": f"{l}.{h}", "token": task.token_label(model, female, t),
                     "clean_minus_patched": float(effects[l, h, t])} for l, h, t in np.ndindex(effects.shape)]
            rows.sort(key=lambda r: -abs(r["clean_minus_patched"]))
            _emit(_top(Table(rows), args.top), args,
                  _describe(model, obs, prompts=prompts, patching="full (activation), one position at a time"),
                  effects.size)
    elif args.command == "steer":
        node = parse_node(model, args.head)
        if node.kind != "attn":
            raise UsageError("--head must name an attention head, e.g. 3.0")
        obs = _observable(model, args.observable)
        key, female, male = _prompts(model, args.observable, args.template)
        ids = np.concatenate([female, male])
        position = args.position
        if position is None:
            _, per_position = ex.direct_logit_attribution(model, ids, obs)
            position = int(np.argmax(np.abs(per_position[node.layer, node.head])))
        if not -ids.shape[1] <= position < ids.shape[1]:
            raise UsageError(f"--position {position} is outside the {ids.shape[1]} tokens of the {key} prompts")
        vector = head_features(model, obs)[node.layer, node.head]
        unit = ex.activation_scale(model, ids, node.layer, position, vector) if args.relative else 1.0
        table = ex.steer(model, ids, {args.observable: obs}, f"blocks.{node.layer}.hook_resid_pre", position,
                         vector, [m * unit for m in args.multipliers])
        for row, m in zip(table.rows, args.multipliers):
            row["token"] = task.token_label(model, ids, position)
            if args.relative:
                row["relative_multiplier"] = m
        columns = ["activation", "token"] + (["relative_multiplier"] if args.relative else []) + \
            ["multiplier"] + [c for c in table.columns if c.endswith("_effect")]
        _emit(Table(table.rows, columns), args, _describe(model, obs, head=args.head, prompts=f"{key} (20 prompts)",
                                                          effect="mean change of the observable at the last token"))
    elif args.command == "demo":
        case_study.run_demo(model, args.out, figures=not args.no_figures)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        run(args)
    except UsageError as exc:
        message = str(exc)
        print(message if message.startswith("obsprop") else f"obsprop: error: {message}", file=sys.stderr)
        return 2
    except RefimplError as exc:
        print(f"obsprop: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
