"""What ``validate`` expects of a peer and how it compares: the oracle's activations, features, path patching and weights (raw or processed as TransformerLens processes them), the agreement of two arrays, and the report's items and printing."""

from __future__ import annotations
import json
import re
from dataclasses import asdict, dataclass, field
import numpy as np
from verification.peers import identities as I


_RESIDUAL = re.compile(r"^(hook_embed|hook_pos_embed|blocks\.\d+\.(hook_resid_pre|hook_resid_mid|hook_resid_post"
                       r"|hook_attn_out|hook_mlp_out))$")


_NORMALIZED = re.compile(r"^(?:(blocks\.\d+)\.)?(ln1|ln2|ln_final)\.hook_normalized$")


_VALUE = re.compile(r"^blocks\.(\d+)\.attn\.hook_(v|z)$")


@dataclass
class Item:
    item: str
    kind: str
    agreement: float
    tolerance: float
    verdict: str
    identity: str = ""
    note: str = ""
    snippet: str = ""


@dataclass
class Report:
    peer: str
    model: str
    dtype: str
    processed: bool
    processing: list
    prompts: dict
    notes: list
    items: list = field(default_factory=list)
    identities: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failures(self) -> list:
        return [item for item in self.items if item.verdict != "pass"]

    def to_json(self) -> dict:
        out = asdict(self)
        out["failures"] = [item.item for item in self.failures]
        return out


def observable_of(model, n: np.ndarray):
    """The oracle's Observable for an arbitrary vocabulary vector n (residual image W_U n)."""
    from refimpl.propagation.observables import Observable

    n = np.asarray(n, dtype=model.dtype)
    return Observable(vocab=n, residual=model.weights["unembed.W_U"] @ n, terms=(), name="n")


def expected_activation(model, trace: dict, name: str, processed: bool, pre_gain: bool):
    """What the peer must record under ``name``: the oracle's value, mapped by the identities that apply.
    Returns (array, identity names)."""
    W = model.weights
    value, used = np.asarray(trace[name]), []
    m = _NORMALIZED.match(name)
    if m and pre_gain:
        prefix = f"{m.group(1)}." if m.group(1) else ""
        value = I.pre_gain_normalized(value, W[f"{prefix}{m.group(2)}.w"], W[f"{prefix}{m.group(2)}.b"])
        used.append("pre_gain_normalized")
    if processed:
        v = _VALUE.match(name)
        if name == "logits":
            value = I.centred_logits(value)
            used.append("centred_logits")
        elif _RESIDUAL.match(name):
            value = I.centred_residual(value)
            used.append("centred_residual")
        elif v:
            layer = int(v.group(1))
            value = I.value_without_bias(value, W[f"blocks.{layer}.ln1.b"], W[f"blocks.{layer}.attn.W_V"])
            used.append("value_without_bias")
    return value, used


def expected_features(model, n: np.ndarray, processed: bool):
    import refimpl

    if not processed:
        return refimpl.head_features(model, observable_of(model, n)), []
    u_raw = observable_of(model, I.centred_observable(np.asarray(n, dtype=model.dtype))).residual
    return I.processed_head_features(model.weights, model.config.n_layers, u_raw), [
        "centred_observable", "processed_feature_residual", "processed_head_features"]


def expected_path_patching(model, clean, corrupt, n: np.ndarray, processed: bool):
    from refimpl.case_study.experiments import path_patch_heads

    if not processed:
        return path_patch_heads(model, clean, corrupt, observable_of(model, n)), []
    raw = path_patch_heads(model, clean, corrupt, observable_of(model, I.centred_observable(np.asarray(n))))
    return I.processed_path_patching(raw), ["centred_observable", "processed_path_patching"]


def expected_weights(model, processed: bool) -> dict:
    if not processed:
        return dict(model.weights)
    return I.processed_weights(model.weights, model.config.n_layers)


def agreement_of(got, expected, scale: float | None = None) -> tuple[float, str]:
    """max |got - expected| / scale (default max |expected|), over entries finite on both sides; a shape
    or finiteness-pattern mismatch is inf with the reason, and so are values that are not real numbers (a
    complex peer value is not compared by its real part)."""
    got, expected = np.asarray(got), np.asarray(expected, dtype=np.float64)
    if np.iscomplexobj(got) or not np.issubdtype(got.dtype, np.number):
        return float("inf"), f"dtype {got.dtype}: a peer's values must be real numbers"
    if got.shape != expected.shape:
        return float("inf"), f"shape {got.shape}, expected {expected.shape}"
    finite = np.isfinite(expected)
    if not np.array_equal(np.isfinite(got), finite):
        return float("inf"), (f"{int((np.isfinite(got) != finite).sum())} entries finite on one side only "
                              "(e.g. masked attention scores)")
    if not finite.any():
        return 0.0, ""
    diff = float(np.max(np.abs(got[finite] - expected[finite])))
    scale = float(np.max(np.abs(expected[finite]))) if scale is None else float(scale)
    return (diff / scale if scale else diff), ""


def _float32_representable(arrays) -> bool:
    return all(np.array_equal(a, a.astype(np.float32).astype(np.float64)) for a in arrays if a.dtype == np.float64)


def _ids_literal(ids: np.ndarray) -> str:
    return "np.array(" + json.dumps(np.asarray(ids).tolist()) + ")"


def format_report(report: Report) -> str:
    lines = [f"peer {report.peer} | model {report.model} | {report.dtype} | "
             f"{'processed: ' + ', '.join(report.processing) if report.processed else 'raw weights'}",
             f"prompts: {len(report.prompts['clean'])} x {len(report.prompts['clean'][0])} tokens "
             f"(local window {report.prompts['window']}), observable {report.prompts['observable']}"]
    lines += [f"note: {note}" for note in report.notes]
    width = max([len(i.item) for i in report.items] + [4])
    lines.append(f"{'item':<{width}}  {'agreement':>9}  {'tolerance':>9}  verdict  identity")
    for i in report.items:
        lines.append(f"{i.item:<{width}}  {i.agreement:9.1e}  {i.tolerance:9.1e}  {i.verdict:<7}  {i.identity}")
    if report.identities:
        lines.append("identity residuals (max agreement of the items checked through each):")
        lines += [f"  {name}: {value:.1e}" for name, value in sorted(report.identities.items())]
    failures = report.failures
    lines.append(f"{len(report.items) - len(failures)} of {len(report.items)} items agree ({report.seconds:.1f} s)")
    for i in failures:
        lines.append(f"\nFAIL {i.item}: {i.note}\n--- reproduce:\n{i.snippet}")
    return "\n".join(lines)
