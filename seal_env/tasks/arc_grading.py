"""Grading few-shot ARC predictions: reading a grid out of model text, exact and cell-wise matching,
and majority voting over predictions made under invertible transformations."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from seal_env.tasks.arc_data import parse_grid
from seal_env.tasks.arc_tools import Flip, Rotate, Tool, Transpose

def extract_grid(text: str) -> np.ndarray | None:
    """The first block of consecutive digit-only lines in a model's output, parsed; else None.

    Small models often wrap the grid ("Output:", code fences, a sentence after it); only the lines
    in the block count, and a ragged block is None. Never raises.
    """
    if not isinstance(text, str):
        return None
    block: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line and line.isascii() and line.isdigit():
            block.append(line)
        elif block:
            break
    return parse_grid("\n".join(block)) if block else None


def grid_match(prediction: np.ndarray | None, truth: np.ndarray) -> bool:
    """ARC's criterion: same shape and every cell equal."""
    return prediction is not None and prediction.shape == truth.shape and bool((prediction == truth).all())


def cell_accuracy(prediction: np.ndarray | None, truth: np.ndarray) -> float:
    """Fraction of cells equal to the truth; 0.0 for a missing prediction or a different shape."""
    if prediction is None or prediction.shape != truth.shape:
        return 0.0
    return float((prediction == truth).mean())


def vote(candidates: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """The most frequent grid among the candidates (None entries ignored); ties go to the earliest."""
    counts: Counter[tuple[tuple[int, ...], bytes]] = Counter()
    first: dict[tuple[tuple[int, ...], bytes], np.ndarray] = {}
    for grid in candidates:
        if grid is not None:
            key = (grid.shape, grid.astype(np.int8).tobytes())
            counts[key] += 1
            first.setdefault(key, grid)
    if not counts:
        return None
    best = max(counts.values())
    return next(grid for key, grid in first.items() if counts[key] == best)


class Identity(Tool):
    """The untransformed task (the first voter)."""

    @property
    def name(self) -> str:
        return "identity"

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return grid

    def inverse(self, grid: np.ndarray) -> np.ndarray:
        return grid


DIHEDRAL_TOOLS: tuple[Tool, ...] = (Rotate(90), Rotate(180), Rotate(270), Flip(0), Flip(1), Transpose())
"""Default voters: the shape-preserving-up-to-transpose symmetries, each invertible for any grid."""
