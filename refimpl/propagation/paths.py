"""Nodes and paths (Section 4.2): "17.14" is head 14 of layer 17, "MLP16" the MLP of layer 16; a path runs from
its earliest node to its latest, each node able to feed the next (the model's structure says which can)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from refimpl.errors import InputError


@dataclass(frozen=True, order=True)
class Node:
    """One sublayer on a path: attention head ``layer.head`` or the MLP of ``layer``."""

    layer: int
    kind: str  # "attn" sorts before "mlp" within a layer (whether one feeds the other is the structure's answer)
    head: int | None = None

    @property
    def label(self) -> str:
        return f"{self.layer}.{self.head}" if self.kind == "attn" else f"MLP{self.layer}"


def layer_norm_of(model, node: Node) -> str:
    """The LayerNorm in front of ``node`` (ln_1 for attention, ln_2 for the MLP in a serial block)."""
    return model.structure.layer_norm(node.kind, node.layer)


_HEAD = re.compile(r"^\s*(\d+)\s*\.\s*(\d+)\s*$")


_MLP = re.compile(r"^\s*mlp\s*(\d+)\s*$", re.IGNORECASE)


def parse_node(model, spec) -> Node:
    """"17.14" or (17, 14) -> head 14 of layer 17; "MLP16", "mlp 16" or ("mlp", 16) -> MLP of layer 16."""
    cfg = model.config
    if isinstance(spec, Node):
        if spec.kind not in ("attn", "mlp") or not _is_int(spec.layer) or \
                (spec.kind == "attn" and not _is_int(spec.head)) or (spec.kind == "mlp" and spec.head is not None):
            raise InputError(f"cannot read path node {spec!r}: a Node is (layer, 'attn', head) or (layer, 'mlp')")
        node = spec
    elif isinstance(spec, str) and _HEAD.match(spec):
        layer, head = map(int, _HEAD.match(spec).groups())
        node = Node(layer, "attn", head)
    elif isinstance(spec, str) and _MLP.match(spec):
        node = Node(int(_MLP.match(spec).group(1)), "mlp")
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and spec[0].lower() == "mlp" \
            and _is_int(spec[1]):
        node = Node(int(spec[1]), "mlp")
    elif isinstance(spec, tuple) and len(spec) == 2 and all(_is_int(v) for v in spec):
        node = Node(int(spec[0]), "attn", int(spec[1]))
    else:
        raise InputError(f"cannot read path node {spec!r}: use 'layer.head' (e.g. '17.14') or 'MLP<layer>'")
    if not 0 <= node.layer < cfg.n_layers:
        raise InputError(f"node {node.label} names layer {node.layer}, but the model has layers 0..{cfg.n_layers - 1}")
    if node.kind == "attn" and not 0 <= node.head < cfg.n_heads:
        raise InputError(f"node {node.label} names head {node.head}, but layers have heads 0..{cfg.n_heads - 1}")
    return node


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def parse_path(model, path: Sequence) -> tuple[Node, ...]:
    """Nodes from the earliest to the latest, each able to feed the next (the structure's ``order``: in a
    serial block (layer, attention before MLP) strictly increasing)."""
    if not isinstance(path, (str, Node, tuple, list)):
        raise InputError(f"path must be a node ('17.14', 'MLP3', (17, 14)) or a list of nodes, "
                         f"got {type(path).__name__}")
    one_node = isinstance(path, tuple) and len(path) == 2 and (  # (17, 14) or ("mlp", 16), as parse_node reads
        not isinstance(path[0], (str, tuple, Node)) or (isinstance(path[0], str) and path[0].lower() == "mlp"))
    if isinstance(path, (str, Node)) or one_node:
        path = [path]
    nodes = tuple(parse_node(model, spec) for spec in path)
    if not nodes:
        raise InputError("a path needs at least one node")
    for earlier, later in zip(nodes, nodes[1:]):
        order = model.structure.order
        if not order(earlier.kind, earlier.layer) < order(later.kind, later.layer):
            raise InputError(
                f"path {' -> '.join(n.label for n in nodes)} is not in increasing layer order "
                f"({earlier.label} cannot feed {later.label})")
    return nodes


def path_label(nodes: Sequence[Node]) -> str:
    return " -> ".join(n.label for n in nodes)
