"""``UnicodeText``: the text space of the open-ended and skill-tree envs' observations and actions.

A gymnasium ``Text`` space whose members are any Unicode text but control
characters (what an LLM may write), with the ASCII charset it replaced kept
as :data:`PRINTABLE`. :mod:`teachgym.envs.base` re-exports both.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from gymnasium import spaces

from teachgym.text_formats import is_text_char

#: Printable ASCII with whitespace. No longer the charset of any space (see
#: :class:`UnicodeText`); kept for code that wants an ASCII-only check.
PRINTABLE = frozenset(string.printable)


class UnicodeText(spaces.Text):
    """A ``gymnasium.spaces.Text`` whose members are any Unicode text but control characters.

    Gymnasium's Text space checks membership against a finite charset, which
    cannot hold "any character an LLM may write". Here :meth:`contains` uses
    :func:`is_text_char` instead (newline and tab allowed, other control
    characters and lone surrogates refused), with the usual length bounds.
    :meth:`sample` draws from a finite, documented subset: printable ASCII
    plus a few common non-ASCII symbols (:data:`SAMPLE_CHARS`), so samples are
    members and show that non-ASCII text is accepted. The space is not
    flattenable to a fixed-size array (there is no finite character index).
    """

    #: What :meth:`sample` draws characters from.
    SAMPLE_CHARS = (
        string.printable.replace("\r", "").replace("\x0b", "").replace("\x0c", "")
        + "×÷−–—éüñ…→≤≥√π°"
    )

    def __init__(
        self, max_length: int, *, min_length: int = 1, seed: int | np.random.Generator | None = None
    ) -> None:
        super().__init__(max_length, min_length=min_length, charset=self.SAMPLE_CHARS, seed=seed)

    def contains(self, x: Any) -> bool:
        return (
            isinstance(x, str)
            and self.min_length <= len(x) <= self.max_length
            and all(is_text_char(ch) for ch in x)
        )

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length}, no control chars but \\n \\t)"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, UnicodeText)
            and self.min_length == other.min_length
            and self.max_length == other.max_length
        )

    __hash__ = None  # type: ignore[assignment]
