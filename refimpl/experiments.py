"""The case-study experiments, every one under one name: ``refimpl.case_study.experiments`` (the shared clean
run, direct logit attribution, path and activation patching), ``.interventions`` (steering, bias mitigation)
and ``.fits`` (Table 1's fits, the LayerNorm studies, the MLP segment)."""

from refimpl.case_study.experiments import (CLEAN_RUNS, activation_patch_heads, clean_names, clean_run,  # noqa: F401
                                            clear_clean_runs, direct_logit_attribution, observable_values,
                                            path_patch_heads)
from refimpl.case_study.fits import (best_fit, coupling_vs_fit, head_input_scores, layer_norm_gain_variance,  # noqa: F401
                                     layer_norm_input_norms, ln_final_approximation_error, mlp_segment)
from refimpl.case_study.interventions import activation_scale, bias_mitigation_search, steer  # noqa: F401
