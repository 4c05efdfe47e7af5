"""Alias bombs and recursive anchors, found before anything walks the node tree.

Aliases share nodes, so a composed graph stays small while its expansion can be
astronomically large ("billion laughs"). Aliases are allowed, but a document
whose aliases expand beyond a sane size is rejected.
"""

from __future__ import annotations

from typing import Final, cast

from batcher.errors import Problem
from batcher.jobfile.yaml_nodes import MappingNode, Node, SequenceNode, line

__all__ = ["ALIAS_EXPANSION_FACTOR", "ALIAS_EXPANSION_FLOOR", "alias_problem"]

# A document may expand to this many times its own node count, and always to
# this floor, before we call it an alias bomb.
ALIAS_EXPANSION_FACTOR: Final = 10
ALIAS_EXPANSION_FLOOR: Final = 100_000


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return cast(list[Node], node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def alias_problem(root: Node, display: str) -> Problem | None:
    """An alias bomb or a recursive alias in the document, or None.

    The expanded size of every node is computed once per distinct node
    (post-order, iterative: nesting may be deep), which costs the size of the
    file, not of the expansion.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    order: list[Node] = []
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        ident = id(node)
        if finished:
            sizes[ident] = 1 + sum(sizes[id(child)] for child in _children(node))
            active.discard(ident)
            order.append(node)
            continue
        if ident in sizes:
            continue
        if ident in active:
            return Problem(
                display,
                line(node),
                None,
                "a YAML alias refers to a node that contains it (recursive anchor)",
            )
        active.add(ident)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    cap = max(ALIAS_EXPANSION_FACTOR * len(sizes), ALIAS_EXPANSION_FLOOR)
    if sizes[id(root)] <= cap:
        return None
    # Name the innermost node that alone blows the cap: that is where the bomb is.
    culprit = next(node for node in order if sizes[id(node)] > cap)
    return Problem(
        display,
        line(culprit),
        None,
        f"YAML aliases here expand to {sizes[id(culprit)]:,} nodes, more than the "
        f"{cap:,} allowed for a document of {len(sizes):,} nodes (an alias bomb?)",
    )
