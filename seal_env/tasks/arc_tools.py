"""Augmentation tools for ARC test-time training (TTT) and the builder of TTT tasks.

This follows the SEAL release (`few-shot/` code, which uses MARC's `arclib.augmenters`, Akyürek
et al. 2024): a self-edit switches four tool families on or off, and the TTT data are
leave-one-out tasks built from the demonstrations, each also transformed by every chosen tool.

A tool is a deterministic grid -> grid map, applied alike to every grid of a task (inputs and
outputs), so a transformed task is again a consistent ARC task. Random tools (translation, colour
permutation) draw their parameters once, from a numpy Generator, when they are constructed.
Pure numpy; grids are 2-D integer arrays with values 0-9 (see `arc_data`).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from seal_env.tasks.arc_data import MAX_GRID_SIZE, ArcTask, Pair


class Tool(ABC):
    """A grid transformation.

    `name` identifies the tool (stable across runs, used in logs and on TTT tasks). `apply` maps a
    grid to a new grid and never mutates its argument (the result may be a view of it). When
    `invertible` is true, `inverse(apply(g))` equals `g` for every grid `g`; `inverse` raises
    ValueError for a grid whose shape `apply` cannot produce, so that a malformed model prediction
    is rejected rather than silently mangled.
    """

    invertible: bool = True

    @property
    @abstractmethod
    def name(self) -> str: ...

    @abstractmethod
    def apply(self, grid: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def inverse(self, grid: np.ndarray) -> np.ndarray: ...

    def __repr__(self) -> str:
        return f"<Tool {self.name}>"


@dataclass(frozen=True, repr=False)
class Rotate(Tool):
    """Rotate counter-clockwise by `degrees` (90, 180 or 270), as `np.rot90`."""

    degrees: int

    def __post_init__(self) -> None:
        if self.degrees not in (90, 180, 270):
            raise ValueError(f"rotation must be 90, 180 or 270 degrees, got {self.degrees}")

    @property
    def name(self) -> str:
        return f"rotate_{self.degrees}"

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return np.rot90(grid, k=self.degrees // 90)

    def inverse(self, grid: np.ndarray) -> np.ndarray:
        return np.rot90(grid, k=-(self.degrees // 90))


@dataclass(frozen=True, repr=False)
class Flip(Tool):
    """Mirror the grid: axis 0 turns it upside down, axis 1 mirrors it left to right. Self-inverse."""

    axis: int

    def __post_init__(self) -> None:
        if self.axis not in (0, 1):
            raise ValueError(f"flip axis must be 0 or 1, got {self.axis}")

    @property
    def name(self) -> str:
        return "flip_updown" if self.axis == 0 else "flip_leftright"

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return np.flip(grid, axis=self.axis)

    def inverse(self, grid: np.ndarray) -> np.ndarray:
        return np.flip(grid, axis=self.axis)


@dataclass(frozen=True, repr=False)
class Transpose(Tool):
    """Swap rows and columns (mirror along the main diagonal). Self-inverse."""

    @property
    def name(self) -> str:
        return "transpose"

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return grid.T

    def inverse(self, grid: np.ndarray) -> np.ndarray:
        return grid.T


@dataclass(frozen=True, repr=False)
class Reflect(Tool):
    """Append a mirrored copy of the grid along `axis` (MARC's `Reflect`), doubling that side.

    Axis 0 stacks the upside-down copy below the grid, axis 1 the left-right mirror to its right;
    `mirror_first` puts the mirror before the original instead. The inverse keeps the original half.
    """

    axis: int
    mirror_first: bool

    def __post_init__(self) -> None:
        if self.axis not in (0, 1):
            raise ValueError(f"reflect axis must be 0 or 1, got {self.axis}")

    @property
    def name(self) -> str:
        sides = ("above", "below") if self.axis == 0 else ("left", "right")
        return f"mirror_{sides[0] if self.mirror_first else sides[1]}"

    def apply(self, grid: np.ndarray) -> np.ndarray:
        halves = [grid, np.flip(grid, axis=self.axis)]
        return np.concatenate(halves[::-1] if self.mirror_first else halves, axis=self.axis)

    def inverse(self, grid: np.ndarray) -> np.ndarray:
        size = grid.shape[self.axis]
        if size % 2:
            raise ValueError(
                f"{self.name}: a reflected grid has an even size along axis {self.axis}, got shape {grid.shape}"
            )
        half = slice(size // 2, None) if self.mirror_first else slice(None, size // 2)
        return grid[half] if self.axis == 0 else grid[:, half]


@dataclass(frozen=True, repr=False)
class Translate(Tool):
    """Shift the grid cyclically by (`rows`, `cols`) cells, wrapping around (MARC's `RandomTranslateXY`)."""

    rows: int
    cols: int

    @classmethod
    def random(cls, rng: np.random.Generator) -> Translate:
        """A translation by 0-3 cells along each axis, the range MARC draws from."""
        rows, cols = rng.integers(0, 4, size=2)
        return cls(int(rows), int(cols))

    @property
    def name(self) -> str:
        return f"translate_{self.rows}_{self.cols}"

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return np.roll(grid, (self.rows, self.cols), axis=(0, 1))

    def inverse(self, grid: np.ndarray) -> np.ndarray:
        return np.roll(grid, (-self.rows, -self.cols), axis=(0, 1))


@dataclass(frozen=True, repr=False)
class ColorPermutation(Tool):
    """Recolour every cell `c` as `mapping[c]`; `mapping` permutes 0-9 and keeps background 0 fixed."""

    mapping: tuple[int, ...]

    def __post_init__(self) -> None:
        if sorted(self.mapping) != list(range(10)) or self.mapping[0] != 0:
            raise ValueError(f"mapping must permute 0-9 with 0 fixed, got {self.mapping}")

    @classmethod
    def random(cls, rng: np.random.Generator) -> ColorPermutation:
        """A uniformly random permutation of the colours 1-9."""
        return cls((0, *(int(colour) for colour in 1 + rng.permutation(9))))

    @property
    def name(self) -> str:
        return "permute_colors_" + "".join(map(str, self.mapping))

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return np.asarray(self.mapping, dtype=grid.dtype)[grid]

    def inverse(self, grid: np.ndarray) -> np.ndarray:
        return np.argsort(self.mapping).astype(grid.dtype)[grid]


@dataclass(frozen=True, repr=False)
class Scale(Tool):
    """Blow each cell up into a `rows` x `cols` block of the same colour.

    MARC's `IncreaseResolution(k)` is `Scale(k, k)`, `IncreaseHeight(k)` is `Scale(k, 1)` and
    `IncreaseWidth(k)` is `Scale(1, k)`. The inverse keeps the top-left cell of each block.
    """

    rows: int
    cols: int

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"scale factors must be positive, got {self.rows}x{self.cols}")

    @property
    def name(self) -> str:
        return f"scale_{self.rows}x{self.cols}"

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(grid, self.rows, axis=0), self.cols, axis=1)

    def inverse(self, grid: np.ndarray) -> np.ndarray:
        _check_divisible(self.name, grid, self.rows, self.cols)
        return grid[:: self.rows, :: self.cols]


@dataclass(frozen=True, repr=False)
class Tile(Tool):
    """Repeat the whole grid `rows` times downwards and `cols` times across, as `np.tile`.

    MARC's `Repeat(0, n)` is `Tile(n, 1)`, `Repeat(1, n)` is `Tile(1, n)` and `Repeat(2, n)` is
    `Tile(n, n)`. The inverse keeps the first (top-left) tile.
    """

    rows: int
    cols: int

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"tile counts must be positive, got {self.rows}x{self.cols}")

    @property
    def name(self) -> str:
        return f"tile_{self.rows}x{self.cols}"

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return np.tile(grid, (self.rows, self.cols))

    def inverse(self, grid: np.ndarray) -> np.ndarray:
        _check_divisible(self.name, grid, self.rows, self.cols)
        return grid[: grid.shape[0] // self.rows, : grid.shape[1] // self.cols]


class Chain(Tool):
    """Apply `tools` in order; the inverse applies their inverses in reverse order."""

    def __init__(self, tools: Sequence[Tool]) -> None:
        if not tools:
            raise ValueError("a chain needs at least one tool")
        self.tools = tuple(tools)
        self.invertible = all(tool.invertible for tool in self.tools)

    @property
    def name(self) -> str:
        return "+".join(tool.name for tool in self.tools)

    def apply(self, grid: np.ndarray) -> np.ndarray:
        for tool in self.tools:
            grid = tool.apply(grid)
        return grid

    def inverse(self, grid: np.ndarray) -> np.ndarray:
        for tool in reversed(self.tools):
            grid = tool.inverse(grid)
        return grid


def tools_for_config(
    use_basic_augmentations: bool,
    use_size_augmentations: bool,
    use_chain_augmentations: bool,
    use_repeat_augmentations: bool,
    *,
    rng: np.random.Generator,
) -> list[Tool]:
    """The tools a SEAL self-edit selects with its four `data_generation` flags.

    Mirrors `get_augmenters` in the SEAL release, family by family and in the same order:
      basic (11): Rotate(90), Rotate(270), Rotate(180), the two flips, the four reflections,
        one random translation and the transpose;
      size (3): upscale 2x2, double the height, double the width;
      chain (6): each of Rotate(90), Rotate(270), Rotate(180), the two flips and the transpose,
        followed by a 2x2 upscale;
      repeat (3): tile the grid 2x1, 1x2 and 2x2.
    `rng` draws the translation (the only random tool here), so equal seeds give equal tool lists.
    """
    tools: list[Tool] = []
    if use_basic_augmentations:
        tools += [
            Rotate(90), Rotate(270), Rotate(180),
            Flip(0), Flip(1),
            Reflect(0, mirror_first=True), Reflect(1, mirror_first=True),
            Reflect(0, mirror_first=False), Reflect(1, mirror_first=False),
            Translate.random(rng),
            Transpose(),
        ]  # fmt: skip
    if use_size_augmentations:
        tools += [Scale(2, 2), Scale(2, 1), Scale(1, 2)]
    if use_chain_augmentations:
        tools += [
            Chain([first, Scale(2, 2)])
            for first in (Rotate(90), Rotate(270), Rotate(180), Flip(0), Flip(1), Transpose())
        ]
    if use_repeat_augmentations:
        tools += [Tile(2, 1), Tile(1, 2), Tile(2, 2)]
    return tools


@dataclass(frozen=True, eq=False)
class TTTTask:
    """One test-time-training example: demonstrations, then a query whose output is the target.

    `tool` names the transformation that produced it ("identity" for a plain leave-out task).
    Grids may share memory with the source `ArcTask`; treat them as read-only.
    """

    demonstrations: tuple[Pair, ...]
    query_input: np.ndarray
    query_output: np.ndarray
    tool: str

    def grids(self) -> list[np.ndarray]:
        """All grids of the task, demonstrations first, in a fixed order."""
        return [grid for pair in self.demonstrations for grid in pair] + [self.query_input, self.query_output]


def build_ttt_tasks(
    task: ArcTask,
    tools: Sequence[Tool],
    rng: np.random.Generator,
    max_tasks: int | None = None,
    *,
    leave_out: Sequence[int] = (1,),
    permuted_copies: bool = False,
) -> list[TTTTask]:
    """Build TTT tasks from the demonstrations of `task` (its test pairs are never touched).

    1. Leave-out tasks: for each `k` in `leave_out` and each demonstration `i`, demonstration `i`
       becomes the query and every way of dropping `k - 1` further demonstrations gives one task
       with the rest as demonstrations, in their original order. With n demonstrations and the
       default `leave_out=(1,)` these are the n leave-one-out tasks; tasks left with no
       demonstration are skipped, so a one-demonstration task gives none.
    2. Each tool is applied to every grid of every leave-out task (tool-major order, after the
       untransformed tasks); a result with a grid beyond 30 x 30 is skipped.
    3. With `permuted_copies`, every task so far also gets one copy with a random colour
       permutation (0 fixed) and shuffled demonstrations, drawn from `rng`.
    4. Exact duplicates are dropped, keeping the first occurrence.
    5. If more than `max_tasks` remain, a random subset of that size (drawn from `rng`) is kept,
       in the original order.

    The SEAL release trains on `leave_out=(1, 2)`, `permuted_copies=True` (only when at least one
    tool is chosen) and `max_tasks=250`. The result depends only on the inputs and the state of
    `rng`, so equal seeds give equal lists.
    """
    if max_tasks is not None and max_tasks < 0:
        raise ValueError(f"max_tasks must be non-negative, got {max_tasks}")
    if any(k < 1 for k in leave_out):
        raise ValueError(f"leave_out sizes must be at least 1, got {tuple(leave_out)}")

    base = _leave_out_tasks(task.train, leave_out)
    candidates = list(base)
    for tool in tools:
        for ttt_task in base:
            augmented = _transform(ttt_task, tool.apply, tool.name)
            if _fits(augmented):
                candidates.append(augmented)
    if permuted_copies:
        candidates += [_permuted_copy(ttt_task, rng) for ttt_task in candidates]

    seen: set[tuple[tuple[tuple[int, ...], bytes], ...]] = set()
    unique = []
    for ttt_task in candidates:
        key = _key(ttt_task)
        if key not in seen:
            seen.add(key)
            unique.append(ttt_task)
    if max_tasks is not None and len(unique) > max_tasks:
        keep = np.sort(rng.choice(len(unique), size=max_tasks, replace=False))
        unique = [unique[i] for i in keep]
    return unique


def _leave_out_tasks(demos: Sequence[Pair], leave_out: Sequence[int]) -> list[TTTTask]:
    tasks = []
    for k in leave_out:
        for query in range(len(demos)):
            others = [i for i in range(len(demos)) if i != query]
            for dropped in itertools.combinations(others, k - 1):
                kept = [i for i in others if i not in dropped]
                if kept:
                    tasks.append(TTTTask(tuple(demos[i] for i in kept), *demos[query], tool="identity"))
    return tasks


def _transform(ttt_task: TTTTask, fn: Callable[[np.ndarray], np.ndarray], name: str) -> TTTTask:
    return TTTTask(
        demonstrations=tuple((fn(x), fn(y)) for x, y in ttt_task.demonstrations),
        query_input=fn(ttt_task.query_input),
        query_output=fn(ttt_task.query_output),
        tool=name,
    )


def _permuted_copy(ttt_task: TTTTask, rng: np.random.Generator) -> TTTTask:
    colours = ColorPermutation.random(rng)
    recoloured = _transform(ttt_task, colours.apply, f"{ttt_task.tool}+{colours.name}+shuffled")
    order = rng.permutation(len(recoloured.demonstrations))
    return TTTTask(
        demonstrations=tuple(recoloured.demonstrations[i] for i in order),
        query_input=recoloured.query_input,
        query_output=recoloured.query_output,
        tool=recoloured.tool,
    )


def _fits(ttt_task: TTTTask) -> bool:
    return all(max(grid.shape) <= MAX_GRID_SIZE for grid in ttt_task.grids())


def _key(ttt_task: TTTTask) -> tuple[tuple[tuple[int, ...], bytes], ...]:
    """Content identity of a task: the shape and cells of every grid, in order."""
    # Cells are 0-9, so int8 bytes identify a grid whatever its dtype or memory layout.
    return tuple((grid.shape, np.asarray(grid, dtype=np.int8).tobytes()) for grid in ttt_task.grids())


def _check_divisible(name: str, grid: np.ndarray, rows: int, cols: int) -> None:
    if grid.shape[0] % rows or grid.shape[1] % cols:
        raise ValueError(f"{name}: grid of shape {grid.shape} is not a multiple of {rows}x{cols}")
