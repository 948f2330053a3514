"""Case-study experiments against direct computations, the obsprop command, and what the organism
guarantees."""

import json

import numpy as np
import pytest

import refimpl
from refimpl.case_study import pipeline as case_study
from refimpl.commands import cli
from refimpl import experiments as ex
from refimpl.oracle import ops
from refimpl.case_study.organism_check import check
from verification.policy.tolerances import relative_error, tolerance

SAME = tolerance("identity", "float64")


ORGANISMS = ("organism", "organism-gpt2")  # the bundled GPT-Neo and GPT-2 organisms: one world, two families


@pytest.fixture(scope="module", params=ORGANISMS)
def organism(request):
    return refimpl.load(request.param, dtype="float64")


@pytest.fixture(scope="module")
def subj(organism):
    return refimpl.observable(organism, case_study.OBSERVABLES["subj"])


@pytest.fixture(scope="module")
def prompts(organism):
    return case_study.paper_prompts(organism)


def test_direct_logit_attribution_matches_head_results(organism, subj, prompts):
    female, male = prompts["subj_friend"]
    ids = np.concatenate([female, male])
    per_head, per_position = ex.direct_logit_attribution(organism, ids, subj)
    assert relative_error(per_position.sum(-1), per_head) <= SAME
    L = organism.config.n_layers
    names = ["ln_final.hook_scale"] + [f"blocks.{l}.attn.hook_result" for l in range(L)]
    _, trace = organism.run_with_trace(ids, names=names)
    g = organism.weights["ln_final.w"] * subj.residual
    for l in range(L):
        direct = (ops.center(trace[f"blocks.{l}.attn.hook_result"][:, -1]) @ g) / trace["ln_final.hook_scale"][:, -1]
        assert relative_error(direct.mean(0), per_head[l]) <= SAME


def test_path_patching_equals_a_patched_forward(organism, subj, prompts):
    female, male = prompts["subj_friend"]
    effects = ex.path_patch_heads(organism, female, male, subj)
    L = organism.config.n_layers
    layer, head = 1, 2
    names = [f"blocks.{layer}.attn.hook_result"]
    _, clean = organism.run_with_trace(female, names=names)
    _, corrupt = organism.run_with_trace(male, names=names)
    diff = corrupt[names[0]][:, :, head] - clean[names[0]][:, :, head]
    patched = organism.forward(female, edits={f"blocks.{L - 1}.hook_resid_post": lambda x: x + diff})
    expected = ((organism.forward(female)[:, -1] - patched[:, -1]) @ subj.vocab).mean()
    assert relative_error(effects[layer, head], expected) <= SAME


def test_steering_zero_is_no_change_and_errors(organism, subj, prompts):
    ids = np.concatenate(prompts["subj_friend"])
    table = ex.steer(organism, ids, {"subj": subj}, "blocks.1.hook_resid_pre", 3, np.ones(64), [0.0])
    assert table[0]["subj_effect"] == 0.0
    with pytest.raises(refimpl.InputError, match="position 40 is outside"):
        ex.steer(organism, ids, {"subj": subj}, "blocks.1.hook_resid_pre", 40, np.ones(64), [1.0])
    with pytest.raises(refimpl.InputError, match="steering vector must have shape"):
        ex.steer(organism, ids, {"subj": subj}, "blocks.1.hook_resid_pre", 3, np.ones(3), [1.0])


def test_best_fit():
    x = np.linspace(-1, 1, 20)
    slope, intercept, r2 = ex.best_fit(x, 0.7 * x + 2)
    assert relative_error([slope, intercept, r2], [0.7, 2.0, 1.0]) <= SAME


def test_mlp_segment_is_exact_at_the_boundary(organism, subj, prompts):
    female, male = prompts["subj_friend"]
    _, trace = organism.run_with_trace(np.stack([male[0], female[0]]), names=["blocks.1.ln2.hook_normalized"])
    x_neg, x_pos = trace["blocks.1.ln2.hook_normalized"][:, -1]
    y = refimpl.head_features(organism, subj)[2, 0]
    table = ex.mlp_segment(organism, 1, y, x_neg, x_pos, points=11)
    assert relative_error(table[0]["actual"], table[0]["linear_at_x_neg"]) <= SAME
    assert relative_error(table[-1]["actual"], table[-1]["linear_at_x_pos"]) <= SAME


def test_layer_norm_studies(organism, prompts):
    ids = np.concatenate(prompts["subj_friend"])
    norms = ex.layer_norm_input_norms(organism, ids)
    assert len(norms) == 2 * organism.config.n_layers + 1 and all(r["mean_input_norm"] > 0 for r in norms)
    groups = [prompts[k] for k in ("subj_friend", "subj_funny", "subj_hard")]
    subj = refimpl.observable(organism, case_study.OBSERVABLES["subj"])
    mae = ex.ln_final_approximation_error(organism, groups, subj)
    assert mae.shape == (3, 3) and np.all(np.isfinite(mae)) and np.all(mae >= 0)


def test_organism_guarantees(organism):
    """What the planted world guarantees, read from the verdicts: the planted bias is there, and on the GPT-Neo
    organism steering along the top pronoun heads' features moves the pronoun logit difference in the
    predicted direction (claim "holds"). The GPT-2 organism, trained on the same world, is a finding: one of
    its steering effects has the wrong sign (head 1.2 on the object pronoun), so that claim does not hold."""
    result = check(organism)
    verdict = {row["claim"]: row["verdict"] for row in result["claims"]}
    assert len(verdict) == 7 and set(verdict.values()) <= {"holds", "does not hold", "not testable here"}
    steering = verdict["Steering along a head's feature moves the observable as predicted"]
    signs = [row["minus_effect"] < 0 < row["plus_effect"] for row in result["steering"]]
    assert steering == ("holds" if all(signs) else "does not hold")
    if organism.source == "organism":
        assert steering == "holds"
    gap = result["bias"]["diff"]["female_minus_male"]
    assert gap > 0  # the planted bias is there to be mitigated


def test_cli_commands(tmp_path, capsys):
    assert cli.main(["features", "--top", "3", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "features.csv").read_text().startswith("label,layer,head,norm")
    assert cli.main(["compare", "--observable", "subj", "--observable", "obj", "--top", "2"]) == 0
    assert cli.main(["scan", "--top", "4"]) == 0
    assert cli.main(["patch", "--observable", "obj", "--top", "3"]) == 0
    assert cli.main(["patch", "--full", "--top", "3"]) == 0
    assert cli.main(["patch", "--full", "--per-position", "--top", "3"]) == 0
    assert cli.main(["steer", "--head", "3.0", "--multipliers", "-1", "1", "--relative"]) == 0
    assert cli.main(["features", "--observable", '{" her": 1, " him": -1}', "--layernorm", "estimate"]) == 0
    out = capsys.readouterr().out
    assert "| label | layer | head | norm |" in out and "coupling_1_to_2" in out and "multiplier" in out


@pytest.mark.parametrize("argv, message", [
    (["features", "--observable", "nonsense"], "--observable must be a preset"),
    (["features", "--top", "0"], "--top: must be at least 1"),
    (["features", "--top", "2.5"], "--top: must be a whole number"),
    (["compare", "--observable", "subj"], "exactly two --observable"),
    (["steer", "--head", "MLP1"], "--head must name an attention head"),
    (["steer", "--head", "3.0", "--multipliers", "nan"], "--multipliers: must be a finite number"),
    (["steer", "--head", "3.0", "--position", "40"], "--position 40 is outside the 12 tokens"),
    (["patch", "--template", "nope"], "--template: invalid choice: 'nope'"),
    (["features", "--layernorm", "fold"], "--layernorm: invalid choice"),
    (["features", "--observable", '{"#3x": 1}'], "is not a single token"),
    (["features", "--observable", '{"\u0663": 1}'], "is not a single token"),
    (["features", "--observable", "[1, 2]"], "must be a non-empty object"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["patch", "--per-position"], "--per-position needs --full"),
])
def test_cli_bad_arguments(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_cli_global_options_before_or_after_the_command(capsys):
    assert cli.main(["--dtype", "float64", "features", "--top", "2"]) == 0
    assert cli.main(["features", "--dtype", "float64", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("(float64)") == 2 and "top 2 of 16" in out


def test_cli_token_ids_use_the_hash_syntax(capsys):
    assert cli.main(["features", "--observable", '{"#673": 1, " he": -1}', "--top", "1"]) == 0
    assert "' she'" in capsys.readouterr().out


def test_cli_help_lists_defaults_and_choices(capsys):
    for command in ("features", "patch", "steer", "scan", "compare", "demo"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        assert "--model" in text and "--dtype" in text, command
        if command in ("features", "patch", "steer", "scan"):
            assert "subj = ' she' - ' he'" in text and "default: subj" in text, command
    with pytest.raises(SystemExit):
        cli.main(["patch", "--help"])
    assert "obj_love" in capsys.readouterr().out


def test_cli_features_exact_layernorm(capsys):
    assert cli.main(["features", "--layernorm", "exact", "--top", "3", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "layernorm: exact" in out and "subj_friend" in out


def test_cli_bad_head_is_a_clear_error(capsys):
    assert cli.main(["steer", "--head", "9.9"]) == 2
    assert "names layer 9" in capsys.readouterr().err


def test_demo_writes_the_case_study(tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "## Feature norms" in summary and "## Path patching" in summary and "## Gender bias" in summary
    assert summary.index("## Claims at a glance") < summary.index("## Feature norms")
    assert " 1 are " not in summary and "model card" in summary
    for name in ("norms_subj.csv", "patching_subj.json", "table1.csv", "table2_steering.csv", "fig1_norms_subj.png",
                 "fig2_patching_subj.png", "fig3b_coupling_subj_obj.png", "fig4_mlp.png", "table1_scatter.png",
                 "fig6_ln_input_norms.png", "fig7_gain_variance.png", "table2_steering.png",
                 "table3_bias_mitigation.png", "claims.csv", "fig2b_activation_patching_subj.png",
                 "activation_patching_obj.csv"):
        assert (tmp_path / name).exists(), name
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["bias"]["diff"]["female_minus_male"] > 0
