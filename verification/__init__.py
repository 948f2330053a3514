"""Verification suite of the refimpl oracle (grows with the verification issue).

``verification.torch_peer``: transformers' GPTNeoForCausalLM as the independent forward peer
(optional dependency: torch and transformers).
"""
