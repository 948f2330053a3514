"""The paper's case study (Sections 6-7, Appendix A): the experiments, the pipeline that runs them, the claims'
verdicts, the paper's printed numbers, the figures and the organism check."""
