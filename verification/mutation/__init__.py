"""Mutation testing: the hand-written catalogue and its runner, and the mechanical (mutmut) run, its record
and its triage."""
