"""The Gymnasium space of self-edits and observations, and the wall-clock type of ``info``."""

from __future__ import annotations

import string
from typing import Any

from gymnasium import spaces


class UnicodeText(spaces.Text):
    """Any Python ``str`` whose length lies in ``[min_length, max_length]``.

    Gymnasium's ``Text`` accepts only the characters of its charset (alphanumerics by default), but a
    self-edit or passage may hold any Unicode text; this space checks type and length only. Samples
    are drawn from printable ASCII.
    """

    def __init__(self, max_length: int, *, min_length: int = 0, seed: int | None = None):
        super().__init__(max_length, min_length=min_length, charset=string.printable, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"


class Seconds(float):
    """A wall-clock duration in ``info``.

    Durations differ from run to run although the transition is the same, so two ``Seconds`` compare
    equal to each other: equal ``info`` dicts then mean an equal transition (Gymnasium's
    ``check_env`` compares the ``info`` of two identical steps). Use ``float(x)`` for the value.
    """

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Seconds)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = float.__hash__
