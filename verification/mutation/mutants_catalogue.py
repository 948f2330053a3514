"""The mutation catalogue: plausible implementation bugs, as text edits of the project's own code.

Add an entry with ``Mutant(id, file, anchor, replacement, description, tests=(...))``. Rules:
* ``anchor`` must occur EXACTLY ONCE in ``file`` (``python -m verification mutants --list`` checks);
  keep it short (one line or a distinctive part of one) so unrelated edits do not break it;
* the mutant must be a real bug, never an equivalent rewrite (e.g. softmax without the max-subtraction
  is equivalent on finite inputs: not a mutant);
* ``tests`` names the test files most likely to catch it (run first; the rest of the suite and the
  verification report run only if those pass).
``FAST`` lists the CI subset (one or two per area), run with ``python -m verification mutants --fast``.
"""

from __future__ import annotations

from verification.mutation.mutants import Mutant
from verification.mutation.catalogue_case_study import CASE_STUDY
from verification.mutation.catalogue_oracle import ORACLE
from verification.mutation.catalogue_propagation import PROPAGATION

CATALOGUE: list[Mutant] = ORACLE + PROPAGATION + CASE_STUDY

# The CI subset: one or two per area, each caught within seconds by its targeted test file. Only
# mutants the suite catches today belong here (CI fails on a survivor): add "prop-mlp-uses-ln1" and
# "prop-ln-norms-all-tokens" once the propagation tests that kill them have landed.
FAST: tuple[str, ...] = (
    "ops-attn-scaled", "ops-ln-unbiased-var", "fwd-no-b_O", "trace-edit-not-applied", "jac-ln-vjp-no-cc",
    "jac-frozen-block-ln1-is-ln2", "prop-estimate-last-is-latest", "prop-exact-skips-jacobian",
    "beam-keeps-worst", "an-coupling-over-y2", "obs-repeat-overwrites", "case-subj-sign-flipped",
    "exp-table1-scores-from-ln2", "rec-head-table-ascending", "ver-identity-tolerance-loose",
    "exp-table1-scores-per-token", "exp-steer-prefix", "exp-mitigation-highest", "verdict-steering-sign",
    "prop-mlp-uses-ln1", "prop-ln-norms-all-tokens", "verdict-slope-gap-over-slope", "resume-attn-out-second-half",
)
