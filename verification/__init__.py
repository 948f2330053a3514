"""Verification suite of the refimpl oracle; ``python -m verification`` runs it as a report.

Modules: ``tolerances`` (the policy table), ``checks`` (Check records), ``derivatives`` (central
differences, complex steps, adjoint identity), ``theorems`` (Theorems 1-2, lemmas, Fact), ``errata``,
``linearized`` (path effects from frozen forward passes), ``torch_peer`` and ``torch_backend``
(transformers and torch autograd; optional), ``conformance`` (checking other implementations' files),
``strategies`` (hypothesis strategies and profiles), ``fixtures`` (small random checkpoints), ``report``.
"""
