"""The skill tree: skill paths such as ``add/carry`` arranged as a forest.

Skills are slash-separated paths; the tree is derived from them, so a task only
has to name its leaves. The SkillTree environment grows the tree at run time
(explore actions add children), which is why it is mutable and serialisable.
"""

from __future__ import annotations

from collections.abc import Iterable


class SkillTree:
    """A forest of skill paths.

    >>> tree = SkillTree(["add/carry", "add/no_carry", "mul/2x1"])
    >>> tree.roots
    ['add', 'mul']
    >>> tree.children("add")
    ['add/carry', 'add/no_carry']
    >>> tree.leaves
    ['add/carry', 'add/no_carry', 'mul/2x1']
    """

    def __init__(self, leaves: Iterable[str] = ()) -> None:
        self._children: dict[str, list[str]] = {"": []}
        for leaf in leaves:
            self.add(leaf)

    def add(self, path: str) -> None:
        """Add ``path`` and any missing ancestors."""
        parts = path.split("/")
        if any(not p for p in parts):
            raise ValueError(f"invalid skill path {path!r}")
        parent = ""
        for i in range(len(parts)):
            node = "/".join(parts[: i + 1])
            if node not in self._children:
                self._children[node] = []
                self._children[parent].append(node)
            parent = node

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and path != "" and path in self._children

    def children(self, path: str) -> list[str]:
        if path not in self:
            raise KeyError(f"unknown skill {path!r}")
        return list(self._children[path])

    def parent(self, path: str) -> str | None:
        if path not in self:
            raise KeyError(f"unknown skill {path!r}")
        head, _, _ = path.rpartition("/")
        return head or None

    @property
    def roots(self) -> list[str]:
        return list(self._children[""])

    @property
    def leaves(self) -> list[str]:
        return [n for n, kids in self._children.items() if n and not kids]

    @property
    def nodes(self) -> list[str]:
        return [n for n in self._children if n]

    def leaves_under(self, path: str) -> list[str]:
        """Leaves at or below ``path``, in tree order."""
        if path not in self:
            raise KeyError(f"unknown skill {path!r}")
        return [leaf for leaf in self.leaves if leaf == path or leaf.startswith(path + "/")]

    def to_list(self) -> list[str]:
        return self.nodes

    @classmethod
    def from_list(cls, nodes: Iterable[str]) -> SkillTree:
        tree = cls()
        for n in nodes:
            tree.add(n)
        return tree

    def copy(self) -> SkillTree:
        return SkillTree.from_list(self.nodes)
