"""Interventions (Sections 6.4, 7): steering along a feature vector at one position, with multipliers absolute or relative to the activation it is added to, and the search for heads whose negatively coupled features mitigate a bias."""

from __future__ import annotations
from typing import Mapping, Sequence
import numpy as np
from refimpl.errors import InputError
from refimpl.propagation.observables import Observable
from refimpl.propagation.propagate import head_features
from refimpl.records import Table, head_label
from refimpl.case_study.experiments import _batch, clean_run, direct_logit_attribution


def steer(model, ids, observables: Mapping[str, Observable], name: str, position: int, vector: np.ndarray,
          multipliers: Sequence[float]) -> Table:
    """Add k * vector to activation ``name`` at ``position`` and report, per k, the mean change of each
    observable at the last position over the prompts (paper Table 2 / Table 3)."""
    ids = _batch(ids)
    if name not in model.activation_names():
        raise InputError(f"unknown activation {name!r} to steer")
    vector = np.asarray(vector, dtype=model.dtype)
    if vector.shape != (model.config.d_model,):
        raise InputError(f"steering vector must have shape ({model.config.d_model},), got {vector.shape}")
    if not -ids.shape[1] <= position < ids.shape[1]:
        raise InputError(f"position {position} is outside prompts of {ids.shape[1]} tokens")
    clean, trace = clean_run(model, ids)  # shared; the edited runs resume from the steered layer
    rows = []
    for k in multipliers:
        def edit(x, k=k):
            x[:, position] += (k * vector).astype(x.dtype)
            return x

        logits = model.forward(ids, edits={name: edit}, logits_at=-1, resume=trace)
        row = {"activation": name, "position": position, "multiplier": float(k)}
        for label, obs in observables.items():
            row[f"{label}_effect"] = float(((logits - clean) @ obs.vocab).mean())
        rows.append(row)
    return Table(rows)


def activation_scale(model, ids, layer: int, position: int, vector: np.ndarray) -> float:
    """mean |resid_pre of ``layer`` at ``position``| / |vector|: the multiplier that makes ``vector`` as
    long as the activation it is added to (steering multipliers comparable across models)."""
    name = f"blocks.{layer}.hook_resid_pre"
    _, trace = clean_run(model, ids)
    return float(np.linalg.norm(trace[name][:, position], axis=-1).mean() / np.linalg.norm(vector))


def bias_mitigation_search(model, ids, n_diff: Observable, n_same: Observable, top: int = 4,
                           multipliers: Sequence[float] = (-50.0,), relative: bool = False) -> Table:
    """Section 7: the ``top`` heads with the LOWEST coupling C(n_diff -> n_same) = y_diff . y_same / |y_diff|^2
    (the most negative ones when that many are negative, as Section 7 describes; on a model with fewer
    negative couplings some chosen heads have positive coupling, and the table shows it); steer with
    k * (n_diff feature) at ln_1's input of that head's layer, at the token with the largest direct
    attribution, and report both observables' effects (more negative n_diff and positive n_same is good).

    With ``relative=True`` a multiplier m means k = m * mean |activation| / |feature| (m = -1 adds a vector
    as long as the activation itself), which makes multipliers comparable across models. Rows: head, token,
    coupling, relative_multiplier (m, or None when ``relative`` is False), k, n_diff_effect, n_same_effect."""
    ids = _batch(ids)
    F_diff, F_same = head_features(model, n_diff), head_features(model, n_same)
    from refimpl.propagation.analysis import coupling

    couplings = coupling(F_diff, F_same)
    _, per_position = direct_logit_attribution(model, ids, n_diff)
    order = np.argsort(couplings, axis=None)[:top]
    rows = []
    for flat in order:
        l, h = np.unravel_index(flat, couplings.shape)
        token = int(np.argmax(np.abs(per_position[l, h])))
        unit = activation_scale(model, ids, l, token, F_diff[l, h]) if relative else 1.0
        ks = [m * unit for m in multipliers]
        table = steer(model, ids, {"n_diff": n_diff, "n_same": n_same}, f"blocks.{l}.hook_resid_pre", token,
                      F_diff[l, h], ks)
        for m, row in zip(multipliers, table):
            rows.append({"head": head_label(l, h), "token": token, "coupling": float(couplings[l, h]),
                         "relative_multiplier": float(m) if relative else None, "k": row["multiplier"],
                         "n_diff_effect": row["n_diff_effect"], "n_same_effect": row["n_same_effect"]})
    return Table(rows)
