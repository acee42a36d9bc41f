"""The few-shot ARC benchmark (benchmarks/few_shot_arc.py) end to end on a tiny model and two tiny tasks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_model, weights_digest
from peft import LoraConfig, get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import few_shot_arc as bench  # noqa: E402

TASKS = {
    "mirror": {
        "train": [{"input": [[1, 0]], "output": [[0, 1]]}, {"input": [[2, 3]], "output": [[3, 2]]}],
        "test": [{"input": [[4, 0]], "output": [[0, 4]]}],
    },
    "same": {
        "train": [{"input": [[5]], "output": [[5]]}, {"input": [[6]], "output": [[6]]}, {"input": [[7]], "output": [[7]]}],
        "test": [{"input": [[8]], "output": [[8]]}],
    },
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def setup(tmp_path: Path, tokenizer):
    folder = tmp_path / "tasks"
    folder.mkdir()
    for name, task in TASKS.items():
        (folder / f"{name}.json").write_text(json.dumps(task))
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(list(TASKS)))
    generator = tmp_path / "generator"
    lora = LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM")
    get_peft_model(make_tiny_model(tokenizer, seed=1), lora).save_pretrained(generator)
    return folder, ids, generator


def test_benchmark_writes_every_row_and_resumes(setup, tmp_path: Path, tokenizer) -> None:
    folder, ids, generator = setup
    model = make_tiny_model(tokenizer)
    before = weights_digest(model)
    argv = ["--tasks", str(ids), "--arc-json", str(folder), "--out", str(tmp_path / "out"), "--quick",
            "--generator", str(generator), "--sample-tokens", "8"]  # fmt: skip
    config = bench.parse_args(argv)
    summary = bench.Benchmark(config, model=(model, tokenizer)).run()

    rows = {row["key"]: row for row in summary["rows"]}
    assert list(rows) == list(bench.ROWS)
    for row in rows.values():
        assert row["n_tasks"] == 2 and 0 <= row["tasks_solved"] <= 2
        assert row["seconds_per_task"]["median"] > 0
    assert rows["fixed"]["usable_self_edits"] == rows["fixed"]["self_edits"] == 2
    assert rows["oracle"]["self_edits"] == 2 * len(config.oracle_grid()) == 4
    # A random tiny generator writes 8 tokens of noise: unusable self-edits, reported, never a crash.
    assert rows["untrained"]["usable_self_edits"] == 0 and rows["untrained"]["errors"]
    assert rows["untrained"]["mean_cell_accuracy"] is None
    assert rows["generator"]["self_edits"] == 2
    assert weights_digest(model) == before

    out = tmp_path / "out"
    assert json.loads((out / "few_shot_arc.json").read_text())["rows"] == json.loads(json.dumps(summary["rows"]))
    table = (out / "few_shot_arc.md").read_text()
    assert all(name in table for name in bench.ROW_NAMES.values())
    records = [json.loads(line) for line in (out / "few_shot_arc.log.jsonl").read_text().splitlines()[1:]]
    fixed = {r["task_id"]: r for r in records if r["row"] == "fixed"}
    reused = [r for r in records if r["row"] == "oracle" and r.get("reused")]
    assert len(reused) == 2 and all(r["solved"] == fixed[r["task_id"]]["solved"] for r in reused)  # basic/output = fixed

    lines = (out / "few_shot_arc.log.jsonl").read_text()
    again = bench.Benchmark(config, model=(model, tokenizer)).run()
    assert (out / "few_shot_arc.log.jsonl").read_text() == lines  # nothing recomputed
    assert [r["tasks_solved"] for r in again["rows"]] == [r["tasks_solved"] for r in summary["rows"]]


def test_bad_arguments_are_reported(setup, tmp_path: Path) -> None:
    folder, ids, _ = setup
    base = ["--tasks", str(ids), "--arc-json", str(folder), "--out", str(tmp_path / "o")]
    with pytest.raises(ValueError, match="needs --generator"):
        bench.parse_args(base + ["--rows", "generator"])
    with pytest.raises(ValueError, match="unknown grid"):
        bench.parse_args(base + ["--grid-augmentations", "sideways"])
    with pytest.raises(FileNotFoundError):
        bench.parse_args(base + ["--generator", str(tmp_path)])
    assert bench.main(base + ["--rows", "nope"]) == 2
