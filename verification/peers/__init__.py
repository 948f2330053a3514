"""Peers: outside implementations validated against the oracle (see ``validate.py``).

``TransformersPeer`` (transformers' GPT-Neo), ``TransformerLensPeer`` (TransformerLens 4.x
TransformerBridge, raw or processed) and ``UserFunctionPeer`` (any ``features(weights, n)`` function)
share the interface of ``base.Peer``. Importing this package imports neither torch nor TransformerLens.
"""

from verification.peers.base import Peer, PeerError


def __getattr__(name):
    if name == "TransformersPeer":
        from verification.peers.transformers_peer import TransformersPeer

        return TransformersPeer
    if name == "TransformerLensPeer":
        from verification.peers.transformer_lens_peer import TransformerLensPeer

        return TransformerLensPeer
    if name == "UserFunctionPeer":
        from verification.peers.user_function import UserFunctionPeer

        return UserFunctionPeer
    raise AttributeError(name)


__all__ = ["Peer", "PeerError", "TransformersPeer", "TransformerLensPeer", "UserFunctionPeer"]
