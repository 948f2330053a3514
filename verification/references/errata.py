"""The paper's errata, each demonstrated numerically: what the paper says next to what is true.

Sources: the paper text (``../shared/paper``) and the authors' published numbers for GPT-Neo-1.3B
(collected in the project's notes). Every function returns a Check whose ``detail`` states both sides.
"""

from __future__ import annotations

import numpy as np

import refimpl
from refimpl.propagation import jacobians

from verification.references.experiment_references import raw_tensors  # the checkpoint read directly (HF keys, float64)
from verification.references import raw_heads
from verification.policy.checks import Check
from verification.references.theorems import sample_constrained_sphere, theorem1_constant

# The authors' printed numbers for GPT-Neo-1.3B used below (Sections 6.5-6.7).
PAPER_NORMS_SUBJ = {"17.14": 70.7219, "15.13": 39.4049, "13.11": 45.9200}
PAPER_NORMS_OBJ = {"17.14": 68.9342, "15.13": 44.0450, "13.11": 51.8211}
PAPER_COSINES = {"17.14": 0.9882, "15.13": 0.9816, "13.11": 0.9352}
PAPER_COUPLINGS = {"17.14": 0.67086, "15.13": 0.77306, "13.11": 0.73552}


def coupling_definition(tolerance: float, seed: int = 0) -> Check:
    """Erratum 1: the text defines C = y1.y2/(|y1||y2|), which is the cosine, and claims C12 C21 = cos;
    Theorem 2's C = y1.y2/|y1|^2 gives C12 C21 = cos^2. Discriminating: for |y1| != |y2|,
    C(y1, y2) |y1|^2 = y1.y2 fails for y1.y2/|y2|^2 and for the cosine; the text's C equals the cosine."""
    rng = np.random.default_rng(seed)
    y1 = 2.0 * rng.normal(size=64)
    y2 = rng.normal(size=64) + 0.25 * y1
    n1, n2, dot = np.linalg.norm(y1), np.linalg.norm(y2), float(y1 @ y2)
    c12, c21 = float(refimpl.coupling(y1, y2)), float(refimpl.coupling(y2, y1))
    cos = float(refimpl.cosine(y1, y2))
    text = dot / (n1 * n2)  # the text's definition
    scale = n1 * n2  # |y1.y2| <= |y1||y2|
    ok = (abs(c12 * n1**2 - dot) <= tolerance * scale and abs(text - cos) <= tolerance
          and abs(c12 * c21 - cos**2) <= tolerance and abs(c12 * c21 - cos) > 100 * tolerance
          and abs(text - c12) > 100 * tolerance)
    return Check("erratum 1: C(y1, y2) |y1|^2 = y1.y2 (|y1| != |y2|); text's C = cosine; C12 C21 = cos^2", ok,
                 c12 * n1**2, dot, tolerance, seed,
                 f"|y1| = {n1:.4f}, |y2| = {n2:.4f}; C12 = {c12:.6f}, text's C = {text:.6f} = cosine {cos:.6f}; "
                 f"C12 C21 = {c12 * c21:.6f} = cos^2 {cos**2:.6f}, not cos (the text's claim)", "errata")


# The authors' with-LayerNorm norms (paper Section 6.5) and the project's notes' derived numbers.
PAPER_NORMS_LN_SUBJ = {"17.14": 236.2457, "15.13": 145.4124, "13.11": 186.3744}
PAPER_NORMS_LN_OBJ = {"17.14": 159.1822, "15.13": 112.3253, "13.11": 144.9379}
NOTES_IMPLIED = {"17.14": 0.9632, "15.13": 1.0972, "13.11": 1.0554}  # notes: cos |y2|/|y1| of the raw numbers


def _implied(cos, norm1, norm2, digits):
    """cos |y2|/|y1| and its rounding bound from printed values known to +-digits each."""
    value = cos * norm2 / norm1
    return value, value * (digits / cos + digits / norm1 + digits / norm2)


def printed_couplings(tolerance: float) -> list[Check]:
    """Erratum 2, what can be computed from printed numbers: the couplings implied by the printed raw norms
    and cosines, C = cos |y2|/|y1|, reproduce the notes' 0.9632, 1.0972, 1.0554 and differ from the printed
    couplings by far more than rounding (a check). Whether the printed couplings are those of ln_f-scaled
    features cannot be computed without GPT-Neo-1.3B: the with-LayerNorm norms give 0.6658, 0.7582, 0.7273
    (the numbers the notes call "ratios"), near but not equal to the printed ones (a measurement)."""
    implied, gaps, ok = {}, {}, True
    for h in PAPER_COSINES:
        value, bound = _implied(PAPER_COSINES[h], PAPER_NORMS_SUBJ[h], PAPER_NORMS_OBJ[h], tolerance)
        implied[h] = value
        gaps[h] = abs(value - PAPER_COUPLINGS[h])
        ok &= abs(value - NOTES_IMPLIED[h]) <= bound + tolerance and gaps[h] > bound + tolerance
    check = Check("erratum 2: printed couplings differ from cos |y2|/|y1| of the printed norms and cosines", ok,
                  " ".join(f"{h}:{v:.4f}" for h, v in implied.items()),
                  " ".join(f"{h}:{v:.5f}" for h, v in PAPER_COUPLINGS.items()), "rounding",
                  detail="implied vs the notes' values within the rounding of the printed digits; gaps to the "
                         "printed couplings " + ", ".join(f"{h}: {g:.3f}" for h, g in gaps.items()), group="errata")
    with_ln = {h: _implied(PAPER_COSINES[h], PAPER_NORMS_LN_SUBJ[h], PAPER_NORMS_LN_OBJ[h], tolerance)[0]
               for h in PAPER_COSINES}
    note = Check("erratum 2 (note): cos |y2|/|y1| with the printed with-LN norms vs printed couplings", True,
                 " ".join(f"{h}:{v:.4f}" for h, v in with_ln.items()),
                 " ".join(f"{h}:{v:.5f}" for h, v in PAPER_COUPLINGS.items()), "measurement",
                 detail="relative gaps " + ", ".join(f"{h}: {abs(with_ln[h] / PAPER_COUPLINGS[h] - 1):.2%}"
                                                     for h in with_ln)
                        + "; raw cosines used (the with-LN cosines are not printed): consistent with ln-scaled "
                          "features, not provable without GPT-Neo-1.3B", group="errata", kind="measurement")
    return [check, note]


def layer_norm_norm_factor(tolerance: float, seed: int = 0) -> Check:
    """Erratum 3 (Section 4.3.3): the gradient of n . LN(x) scales like 1/|x|, so the correction multiplies
    by 1/|x| (the text says 'dividing by 1/|x|', i.e. multiplying by |x|)."""
    rng = np.random.default_rng(seed)
    x, n = rng.normal(size=256), rng.normal(size=256)
    g1 = np.linalg.norm(jacobians.ideal_layer_norm_vjp(x, n))
    g10 = np.linalg.norm(jacobians.ideal_layer_norm_vjp(10 * x, n))
    ratio = float(g10 / g1)
    return Check("erratum 3: LayerNorm gradient scales as 1/|x| (multiply by 1/|x|)", abs(ratio - 0.1) <= tolerance,
                 ratio, 0.1, tolerance, seed, "|grad at 10x| / |grad at x|: paper's 'divide by 1/|x|' would give 10",
                 "errata")


def theorem2_degenerate(tolerance_se: float, seed: int = 0) -> Check:
    """Erratum 4: Theorem 2's proof divides by y1 . y2 and by k; the statement still holds at y1 . y2 = 0
    and at k = 0 (mean within ``tolerance_se`` standard errors)."""
    rng = np.random.default_rng(seed)
    y1 = rng.normal(size=12)
    y2 = rng.normal(size=12)
    y2 -= (y2 @ y1) / (y1 @ y1) * y1  # y1 . y2 = 0
    worst = 0.0
    for y_2, k in ((y2, 0.8), (rng.normal(size=12), 0.0), (y2, 0.0)):
        x = sample_constrained_sphere(y1, 2.0, k, 20000, rng)
        values = x @ y_2
        se = values.std(ddof=1) / np.sqrt(len(values))
        expected = k * (y1 @ y_2) / (y1 @ y1)
        worst = max(worst, abs(values.mean() - expected) / se)
    return Check("erratum 4: Theorem 2 holds at y1.y2 = 0 and k = 0 (proof divides by them)", worst <= tolerance_se,
                 worst, 0.0, tolerance_se, seed, "largest |mean - k y1.y2/|y1|^2| in standard errors", "errata")


def variance_vs_mean_abs(model, ids) -> Check:
    """Erratum 5 (Appendix A.2): var(gain) / mean|x| has units 1/|x|. On ``model``: the A.2 statistic per
    LayerNorm next to the scale-free std(gain)/mean(gain); the statistic of the same model with its residual
    stream scaled by 10 (which every LayerNorm undoes) would be 10 times smaller. A measurement, not a check."""
    L = model.config.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(L)]
    _, trace = model.run_with_trace(np.atleast_2d(ids), names=names)
    rows = []
    for l, name in enumerate(names):
        w = model.weights[f"blocks.{l}.ln1.w"].astype(np.float64)
        mean_abs = float(np.abs(trace[name]).mean())
        rows.append((float(np.var(w)) / mean_abs, float(np.std(w) / np.mean(w))))
    worst = max(range(L), key=lambda l: rows[l][0])
    return Check("erratum 5: A.2's var(gain) / mean|x| on the model's ln_1 (units 1/|x|)", True, rows[worst][0],
                 rows[worst][1], "measurement",
                 detail=f"largest at layer {worst}: var/mean|x| = {rows[worst][0]:.4g} (x10 residual: "
                        f"{rows[worst][0] / 10:.4g}); scale-free std/mean of the gain {rows[worst][1]:.4f}; per layer "
                        + ", ".join(f"{a:.3g}" for a, _ in rows), group="errata", kind="measurement")


PATCH_PROMPTS = ("<|endoftext|>So, Jennifer really is a great friend, isn't",
                 "<|endoftext|>So, John really is a great friend, isn't")


def patching_sign(model, tolerance: float) -> Check:
    """Erratum 6: Section 6.5 says "corrupted - clean", the code computes clean - patched. On ``model``
    (clean: a female name, corrupted: a male name, n = " she" - " he"), the head with the largest |effect|
    of ``refimpl.case_study.experiments.path_patch_heads`` must equal clean - patched recomputed with a model edit
    (the head's corrupted-minus-clean output added to the final residual) and be positive: the head
    writes the answer; "corrupted - clean" would print it negative."""
    from refimpl.case_study import experiments

    clean, corrupt = (model.to_ids(p)[None] for p in PATCH_PROMPTS)
    obs = refimpl.observable(model, {" she": 1, " he": -1})
    effects = experiments.path_patch_heads(model, clean, corrupt, obs)
    l, h = np.unravel_index(np.argmax(np.abs(effects)), effects.shape)
    L = model.config.n_layers
    name, final = f"blocks.{l}.attn.hook_result", f"blocks.{L - 1}.hook_resid_post"
    _, a = model.run_with_trace(clean, names=[name])
    _, b = model.run_with_trace(corrupt, names=[name])
    diff = np.array(b[name][0, :, h] - a[name][0, :, h])  # [T, d]
    clean_score = float(model.forward(clean)[0, -1] @ obs.vocab)
    patched = float(model.forward(clean, edits={final: lambda x: x + diff[None]})[0, -1] @ obs.vocab)
    effect = float(effects[l, h])
    ok = effect > 0 and abs(effect - (clean_score - patched)) <= tolerance * max(abs(clean_score), abs(patched))
    return Check(f"erratum 6: path patching of the top head {l}.{h} is clean - patched > 0", ok, effect,
                 clean_score - patched, tolerance,
                 detail=f"clean - patched = {clean_score - patched:.6f} (this project); the text's 'corrupted - clean' "
                        f"reads {patched - clean_score:.6f}", group="errata")


def swapped_layer_norms(model, observable, ids, tolerance: float) -> Check:
    """Erratum 7: with LayerNorm estimates, the authors' code scales attention features with ln_2's gain
    and applies ln_f's gain on the head's input side: y_a = sqrt(d) g_ln2 * g_f * sqrt(d) W_OV^T u / |x_f|,
    where the correct one is y = sqrt(d) g_ln1 * W_OV^T (sqrt(d) g_f * u / |x_f|). Both are computed from the
    raw checkpoint tensors; ``head_features(..., "estimate")`` must equal y (and so differ from y_a)."""
    raw = raw_tensors(model)
    cfg = model.config
    d, H, dh, L = cfg.d_model, cfg.n_heads, cfg.d_model // cfg.n_heads, cfg.n_layers
    W_U = raw_heads.unembedding(raw)  # [V, d]
    u = W_U.T @ observable.vocab.astype(np.float64)
    final = f"blocks.{L - 1}.hook_resid_post"
    _, trace = model.run_with_trace(np.atleast_2d(ids), names=[final])
    norm_f = float(np.linalg.norm(trace[final][:, -1], axis=-1).mean())
    g_f = raw["transformer.ln_f.weight"]
    correct, authors = np.empty((L, H, d)), np.empty((L, H, d))
    for l in range(L):
        p = f"transformer.h.{l}."
        for h in range(H):
            M = raw_heads.dense_ov(raw, l, h, dh)  # dense W_OV, column convention [d, d]
            correct[l, h] = np.sqrt(d) * raw[p + "ln_1.weight"] * (M.T @ (np.sqrt(d) * g_f * u / norm_f))
            authors[l, h] = np.sqrt(d) * raw[p + "ln_2.weight"] * g_f * np.sqrt(d) * (M.T @ (u / norm_f))
    F = refimpl.head_features(model, observable, "estimate", norms={"ln_final": norm_f})
    error = float(np.abs(F - correct).max() / np.abs(correct).max())
    l, h = np.unravel_index(np.argmax(np.linalg.norm(correct, axis=-1)), (L, H))
    change = abs(np.linalg.norm(authors[l, h]) / np.linalg.norm(correct[l, h]) - 1)
    apart = float(np.abs(authors - correct).max() / np.abs(correct).max())
    return Check("erratum 7: head_features (estimate) = ln_1 convention from raw tensors, not the authors'",
                 error <= tolerance and apart > 100 * tolerance, error, 0.0, tolerance,
                 detail=f"max relative error vs the correct convention {error:.2e}; vs the authors' {apart:.3f}; "
                        f"largest head {l}.{h}: |y| = {np.linalg.norm(correct[l, h]):.4f}, authors' "
                        f"{np.linalg.norm(authors[l, h]):.4f} ({change:.1%} apart)", group="errata")


def theorem1_constant_check(tolerance: float) -> Check:
    """Erratum 8: c, the least root of g'(c) = (pi - 2 g(c)) / (2 (1 - c)), is 0.1554211... (root finding,
    against mpmath at 30 digits when available); the printed 0.155241 is those six digits with two adjacent
    digits transposed, and is not a root."""
    c = theorem1_constant()
    try:
        import mpmath

        mpmath.mp.dps = 30
        g = lambda t: mpmath.acos(mpmath.sqrt(1 - t))  # noqa: E731
        reference = float(mpmath.findroot(lambda t: 1 / (2 * mpmath.sqrt(t) * mpmath.sqrt(1 - t))
                                          - (mpmath.pi - 2 * g(t)) / (2 * (1 - t)), 0.155))
        source = "mpmath findroot, 30 digits"
    except ImportError:
        reference, source = 0.15542113167741777, "stored mpmath value"
    digits, printed = f"{c:.6f}"[2:], "155241"
    transposed = any(digits[:i] + digits[i + 1] + digits[i] + digits[i + 2:] == printed for i in range(5))
    ok = abs(c - reference) <= tolerance and transposed and abs(0.155241 - reference) > 1e4 * tolerance
    return Check("erratum 8: Theorem 1 constant c = 0.1554211 (paper prints 0.155241)", ok, c, reference, tolerance,
                 detail=f"reference: {source}; 0.{digits} with two adjacent digits swapped is 0.{printed}: "
                        f"{transposed}; d >= 8 still suffices since 1/7 = 0.1429 < c", group="errata")


def listing() -> list[str]:
    """One line per erratum, for the README and the report."""
    return [
        "1. Coupling: the text defines C = y1.y2/(|y1||y2|) (the cosine) and says C12 C21 = cos; Theorem 2 "
        "and the code use y1.y2/|y1|^2, with C12 C21 = cos^2.",
        "2. The printed couplings 0.67086, 0.77306, 0.73552 do not follow from the printed norms and cosines "
        "(0.9632, 1.0972, 1.0554); they include each task's ln_f scaling 1/|x_f|.",
        "3. Section 4.3.3: it is the gradient of n.LayerNorm(x), and it is multiplied (not divided) by 1/|x|.",
        "4. Theorem 2's proof: slips (a norm not squared, tan for tan^2, a dropped k) and a division by "
        "y1.y2 and k; the statement holds at y1.y2 = 0 and k = 0.",
        "5. Appendix A.2 compares a variance with a mean absolute value (different units).",
        "6. Section 6.5 says 'corrupted - clean'; the code computes clean - patched.",
        "7. The authors' code applies ln_2 statistics to attention nodes and ln_1 to MLP nodes (swapped), "
        "and the ln_f weight on the input side in its 'with LN' norms.",
        "8. Theorem 1's constant c = 0.1554211..., printed as 0.155241 (digit transposition).",
    ]
