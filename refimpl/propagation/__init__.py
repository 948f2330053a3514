"""Observable propagation (paper Sections 3-5): observables, hand-written Jacobians, paths and their
propagation through LayerNorm modes and MLP boundaries, the virtual-head scan and beam search, and the
data-free analysis (norms, cosines, couplings, Theorem 2, SVD)."""
