"""Knowledge-incorporation benchmark: the SEAL paper's Table 2 on SQuAD passages.

Each passage is learnt by a LoRA update (the environment's inner loop) and its questions are then
answered with no passage in the prompt. Rows differ in what the update trains on:

* ``base``        - nothing (the un-updated model);
* ``passage``     - the passage alone;
* ``restatement`` - the passage + the passage restated one sentence per line (the faithful self-edit
  of ``reward_validity.py``: what copying alone reaches);
* ``untrained``   - the passage + self-edits sampled from the untrained inner model itself;
* one row per external self-edit set in the data file (``self_edits``: ``qwen2.5-7b-base``,
  ``seal-iter2-qwen2.5-7b``, ``gpt-4.1`` in the SEAL release) - the passage + those self-edits;
* ``generator``   - the passage + self-edits sampled from a trained generator (``--generator``).

Columns: SQuAD exact match, token F1, answer containment (the gold span occurs in the model's
answer: the small default model answers in sentences, which exact match scores wrong), and the mean
per-token log-likelihood of the gold answer, each with a 95% bootstrap interval over passages
(weighted by question count), plus seconds per passage.

Modes (``--mode``):

* ``single`` (default) - one update per passage and self-edit, as in the paper's single-passage
  setting. With ``--self-edits-per-passage K`` each of the first K self-edits of a passage gets its
  own update and the passage's score is their mean (the paper evaluates every self-edit separately
  and averages); the default K=1 keeps the CPU cost of a run at one update per passage and row.
* ``cpt`` - continued pretraining: ONE adapter trained on the passages and self-edits of
  ``--n-passages`` passages at once (each self-edit as one sequence, as in the paper's
  multi-passage setting), then the questions of all of them.
* ``continual`` - the passages are learnt one after another into one model (each adapter merged
  before the next update, see :mod:`seal_env.continual`); after each update the current and all
  earlier passages are scored. Writes a matrix per row and heat maps.

Every finished unit (a passage's row; a continual step) is appended to ``<out>/<mode>.log.jsonl``;
running the same command again skips what is there, so an interrupted run resumes. Sampled
self-edits are cached in ``<out>/self_edits.jsonl`` and shared by the modes. ``--reuse-rows-from
DIR`` copies the units that do not depend on the generator from an earlier run with the same
settings. Outputs:
``<out>/<mode>.json`` (with a ``rows`` list), ``<out>/<mode>.md`` and plots.

Example::

    python benchmarks/knowledge_incorporation.py --data ../shared/data/squad_eval_passages.json \\
        --out runs/knowledge --limit 50
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from _common import (
    ResultLog,
    bootstrap_ci,
    file_digest,
    load_generator,
    main_exit_code,
    restatement,
    run_environment,
    write_results,
)
from _knowledge_report import METRICS, markdown_continual, markdown_results, paired_difference, plot_bars, plot_heat_maps
from seal_env.config_cli import parse_config
from seal_env.continual import ContinualStep, forgetting_matrix, run_continual
from seal_env.env import Evaluation, SelfEditError
from seal_env.inner_loop import InnerLoopConfig, TrainResult, adapted
from seal_env.jsonl import differing_settings, read_jsonl, split_header
from seal_env.lm import TrainingExample, sample_self_edits
from seal_env.models import DEFAULT_MODEL_NAME, load_model
from seal_env.tasks.knowledge import SELF_EDIT_PROMPTS, KnowledgeIncorporationEnv, Passage, load_passages

MODES = ("single", "cpt", "continual")
DEFAULT_N_PASSAGES = {"cpt": 10, "continual": 8}
SETTINGS_ADDED_LATER = ("first_passage", "split_sentences", "self_edit_format")
"""Settings added after logs existed: the logs' headers hold one only when it is not at its default."""

# Published results (SEAL paper, Table 2; Qwen2.5-7B, no-context QA accuracy graded by GPT-4.1),
# by row key. The paper's "passage + synthetic" row used the base model's own implications, which is
# both our ``untrained`` row (our model's own) and the released ``qwen2.5-7b-base`` set; its SEAL row
# is a generator after two ReST-EM rounds (the released ``seal-iter2-qwen2.5-7b`` set, and what a
# ``--generator`` trained by this project aims at).
PAPER_RESULTS = {
    "single": {
        "setting": "single passage (n=1, LoRA)",
        "base": 32.7,
        "passage": 33.5,
        "untrained": 39.7,
        "qwen2.5-7b-base": 39.7,
        "gpt-4.1": 46.3,
        "seal-iter2-qwen2.5-7b": 47.0,
        "generator": 47.0,
    },
    "cpt": {
        "setting": "continued pretraining (n=200, full fine-tuning)",
        "base": 32.7,
        "passage": 36.0,
        "untrained": 50.6,
        "qwen2.5-7b-base": 50.6,
        "gpt-4.1": 59.4,
        "seal-iter2-qwen2.5-7b": 58.2,
        "generator": 58.2,
    },
}


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` for ``--shard``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (e.g. 0/2), got {text!r}") from None
    return index, count


@dataclass
class BenchmarkConfig:
    """Settings of a run; the command line maps one to one onto these fields."""

    data: Path
    """Passages JSON (the layout of squad_eval_passages.json; optional ``self_edits`` sets)."""
    out: Path
    """Folder for the resumable logs and the outputs."""
    mode: Literal["single", "cpt", "continual"] = "single"
    """``single``, ``cpt`` or ``continual``."""
    limit: int | None = None
    """single mode: use the first N passages (default: all)."""
    first_passage: int = 0
    """single mode: start at this passage (0-based) instead of the first, e.g. to confirm a result on
    passages that the evaluations which chose it never used. Counted before ``--limit``."""
    n_passages: int | None = None
    """cpt / continual modes: how many passages (the first N; default 10 / 8)."""
    rows: list[str] | None = field(default=None, metadata={"parse": lambda text: [k.strip() for k in text.split(",") if k.strip()]})
    """Row keys to run, comma-separated on the command line (default: every row available)."""
    self_edits_per_passage: int = 1
    """K: self-edits used per passage and row (single mode: K updates, scores averaged)."""
    shard: tuple[int, int] | None = field(default=None, metadata={"parse": parse_shard})
    """single mode, ``I/N`` on the command line: ``(i, n)`` runs only the passages whose index is ``i`` modulo ``n``, so that n
    worker processes on one ``--out`` folder share the work (they append to the same logs). A
    worker writes no outputs while other shards are unfinished; the last one to finish does, as
    does a later run without a shard."""
    generator: Path | None = None
    """A trained generator: a PEFT adapter folder (``save_pretrained``) on the inner model, or a full
    checkpoint folder; adds the ``generator`` row."""
    reuse_rows_from: Path | None = None
    """single mode: the ``--out`` folder of an earlier run whose log has this run's settings apart from
    ``--generator``. Its units of this run's rows other than ``generator`` (the ``untrained`` row,
    say) are copied into this run's logs instead of being computed again: they do not depend on the
    generator, and sampling (seeded per passage) and the inner loop are deterministic. Evaluating a
    new generator against the untrained row then costs half as much."""
    model: str | None = None
    """Inner model: ``None`` for the embedded default, else a Hugging Face id or local folder."""
    inner_loop: Literal["default", "seal"] = "default"
    """``default`` (InnerLoopConfig(): tuned for the small CPU model) or ``seal`` (the paper's)."""
    inner_max_steps: int | None = None
    """A fixed number of optimiser steps per update instead of the preset's epochs
    (``InnerLoopConfig.max_steps``): judge a generator with the step budget it was trained with."""
    seed: int = 0
    """Seeds self-edit sampling (passage i uses seed + i) and the bootstrap."""
    sample_tokens: int = 256
    """Longest sampled self-edit, in tokens."""
    temperature: float = 1.0
    """Sampling temperature of self-edits."""
    self_edit_format: str = "implications"
    """The prompt the untrained and trained generators write self-edits for (the knowledge
    environment's ``self_edit_format``): evaluate a generator on the format it was trained on."""
    split_sentences: bool = False
    """single and continual modes: train each sentence of a self-edit as its own example instead of
    each line (the knowledge environment's ``split_sentences``): judge a generator in the environment
    it was trained in."""
    max_answer_tokens: int = 24
    """Greedy answer length at evaluation."""
    bootstrap_resamples: int = 10_000
    """Bootstrap resamples of every interval."""
    device: str | None = None
    """Default: CUDA when present, else CPU."""
    threads: int | None = None
    """CPU threads for torch (default: torch's choice, one per core). On a CPU shared with other
    work use 1: with 2 threads on 2 busy cores each operation waits for a descheduled thread."""

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        self.generator = Path(self.generator) if self.generator is not None else None
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "single" and self.n_passages is not None:
            raise ValueError("--n-passages is for the cpt and continual modes; use --limit in single mode")
        if self.mode != "single" and self.limit is not None:
            raise ValueError(f"--limit is for the single mode; use --n-passages in {self.mode} mode")
        if self.first_passage < 0 or (self.first_passage and self.mode != "single"):
            raise ValueError(f"--first-passage must be >= 0 and is for the single mode, got {self.first_passage} in {self.mode} mode")
        if self.split_sentences and self.mode == "cpt":
            raise ValueError("--split-sentences is for the single and continual modes (cpt trains each passage's text whole)")
        if self.shard is not None:
            if self.mode != "single":
                raise ValueError("--shard is for the single mode (cpt and continual train one model in sequence)")
            index, count = self.shard
            if not 0 <= index < count:
                raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
        if self.reuse_rows_from is not None:
            self.reuse_rows_from = Path(self.reuse_rows_from)
            if self.mode != "single":
                raise ValueError("--reuse-rows-from is for the single mode")
            if not (self.reuse_rows_from / "single.log.jsonl").is_file():
                raise FileNotFoundError(f"--reuse-rows-from {self.reuse_rows_from}: no single.log.jsonl there")
        if self.mode != "single" and self.n_passages is None:
            self.n_passages = DEFAULT_N_PASSAGES[self.mode]
        for name in ("limit", "n_passages", "self_edits_per_passage", "sample_tokens", "bootstrap_resamples", "threads",
                     "inner_max_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.self_edit_format not in SELF_EDIT_PROMPTS:
            raise ValueError(f"self_edit_format must be one of {sorted(SELF_EDIT_PROMPTS)}, got {self.self_edit_format!r}")
        if self.inner_loop not in ("default", "seal"):
            raise ValueError(f"inner_loop must be 'default' or 'seal', got {self.inner_loop!r}")
        if self.generator is not None and not self.generator.is_dir():
            raise FileNotFoundError(f"--generator {self.generator}: no such folder")

    def inner_loop_config(self) -> InnerLoopConfig:
        config = InnerLoopConfig.seal() if self.inner_loop == "seal" else InnerLoopConfig()
        config = replace(config, max_steps=self.inner_max_steps)
        if self.mode == "cpt":
            # A whole self-edit is one sequence here; GPT-4.1's run to ~500 tokens, which the
            # single-passage default (256) would cut.
            config = replace(config, max_tokens_per_example=1024)
        return config


@dataclass(frozen=True)
class Row:
    key: str
    name: str
    kind: str
    """``none``, ``passage``, ``restatement``, ``sampled`` (untrained / generator) or ``external``."""


# ---------------------------------------------------------------------------------------- helpers


def _mean_metrics(metrics: Sequence[dict[str, float]]) -> dict[str, float]:
    return {m: float(np.mean([x[m] for x in metrics])) for m in METRICS}


def available_rows(passages: Sequence[Passage], with_generator: bool, model_label: str) -> list[Row]:
    """Every row this data and these settings allow, in table order."""
    built_in = [
        Row("base", "base model (no update)", "none"),
        Row("passage", "passage only", "passage"),
        # The faithful self-edit of the reward-validity benchmark: what copying alone reaches.
        Row("restatement", "passage + the passage restated one sentence per line", "restatement"),
        Row("untrained", f"passage + untrained {model_label} self-edits", "sampled"),
    ]
    generator = Row("generator", "passage + trained generator self-edits", "sampled")
    reserved = {row.key for row in built_in} | {generator.key}
    sets: list[str] = []
    for passage in passages:
        sets += [name for name in passage.self_edits if name not in sets]
    for name in sets:
        if name in reserved:
            raise ValueError(f"a self-edit set may not be named {name!r}: that is the key of a built-in row")
        missing = [i for i, p in enumerate(passages) if not p.self_edits.get(name)]
        if missing:
            raise ValueError(f"self-edit set {name!r} is missing from passage(s) {missing[:10]} of the selection")
    rows = built_in + [Row(name, f"passage + {name} self-edits", "external") for name in sets]
    return rows + [generator] if with_generator else rows


class SelfEdits:
    """The self-edits of a row for a passage: the file's external sets, or samples from a model,
    cached in a :class:`ResultLog` so that they are drawn once (and reused across modes)."""

    def __init__(
        self,
        env: KnowledgeIncorporationEnv,
        cache: ResultLog,
        samplers: dict[str, torch.nn.Module],
        config: BenchmarkConfig,
    ):
        self.env, self.cache, self.samplers, self.config = env, cache, samplers, config

    def reuse(self, entries: Iterable[dict[str, Any]]) -> None:
        """Take in self-edits sampled by an earlier run with the same sampling settings (entries of
        its cache), unless drawn here already."""
        for entry in entries:
            if self.cache.get((entry["source"], entry["passage"])) is None:
                self.cache.append(entry)

    def get(self, row: Row, index: int) -> tuple[list[str], float]:
        """``(self-edits, seconds spent sampling them)`` for passage ``index``."""
        k = self.config.self_edits_per_passage
        if row.kind == "external":
            return self.env.contexts[index].self_edits[row.key][:k], 0.0
        if row.kind == "restatement":
            # deterministic, and so is the inner loop: more copies would only repeat its score
            return [restatement(self.env.contexts[index].context)], 0.0
        if row.kind != "sampled":
            raise ValueError(f"row {row.key!r} has no self-edits")
        cached = self.cache.get((row.key, index))
        if cached is None:
            start = time.perf_counter()
            texts = sample_self_edits(
                self.samplers[row.key],
                self.env.tokenizer,
                [self.env.render_prompt(self.env.contexts[index])],
                n=k,
                temperature=self.config.temperature,
                max_new_tokens=self.config.sample_tokens,
                seed=self.config.seed + index,
            )[0]
            cached = {"source": row.key, "passage": index, "texts": texts, "seconds": time.perf_counter() - start}
            self.cache.append(cached)
        return cached["texts"], cached["seconds"]


def _evaluation_record(evaluation: Evaluation) -> dict[str, Any]:
    return {"metrics": {m: evaluation.metrics[m] for m in METRICS}, "items": evaluation.items}


def train_and_evaluate(
    env: KnowledgeIncorporationEnv,
    examples: Sequence[TrainingExample],
    indices: Sequence[int],
    on_evaluation: Callable[[int, Evaluation | None, float, TrainResult], None],
) -> TrainResult:
    """One LoRA update on ``examples`` with the env's settings, then
    ``on_evaluation(index, evaluation, eval_seconds, train_result)`` for each passage in ``indices``
    (evaluation ``None`` when training failed). The model is restored afterwards."""
    with adapted(env.model, env.tokenizer, examples, env.inner_loop) as run:
        for index in tqdm(indices, desc="evaluating", leave=False, disable=len(indices) < 2):
            if run.result.error:
                on_evaluation(index, None, 0.0, run.result)
                continue
            start = time.perf_counter()
            with torch.no_grad():
                evaluation = env.evaluate(run.model, env.contexts[index])
            on_evaluation(index, evaluation, time.perf_counter() - start, run.result)
    return run.result


def passage_example(env: KnowledgeIncorporationEnv, passage: Passage) -> TrainingExample:
    """The passage as one training sequence, exactly as ``include_passage`` adds it."""
    return TrainingExample(env.render_context(passage))


# ---------------------------------------------------------------------------------------- modes


class Benchmark:
    """Runs one mode of the benchmark for a config; :meth:`run` returns the summary written to JSON.

    ``model`` is an already loaded ``(model, tokenizer)`` pair to use instead of ``config.model``
    (tests pass a tiny one); it is named in the outputs by its ``name_or_path``.
    """

    def __init__(self, config: BenchmarkConfig, model: tuple[torch.nn.Module, Any] | None = None):
        self.config = config
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.all_passages = load_passages(config.data)
        n = config.limit if config.mode == "single" else config.n_passages
        if config.mode != "single" and n > len(self.all_passages):
            raise ValueError(f"--n-passages {n} but {config.data} has only {len(self.all_passages)} passages")
        start = config.first_passage
        if start >= len(self.all_passages):
            raise ValueError(f"--first-passage {start} but {config.data} has only {len(self.all_passages)} passages")
        self.passages = self.all_passages[start : start + (n or len(self.all_passages))]
        self.indices = list(range(len(self.passages)))
        if model is None:
            model = load_model(config.model, device=config.device)
            self.model_label = DEFAULT_MODEL_NAME if config.model is None else Path(str(config.model)).name
        else:
            self.model_label = Path(getattr(model[0], "name_or_path", "") or "in-memory model").name
        self.env = KnowledgeIncorporationEnv(
            self.passages,
            model=model,
            inner_loop=config.inner_loop_config(),
            # single: the env's own step() adds the passage and splits lines (the paper's
            # single-passage recipe); cpt/continual add the passage once per passage themselves.
            include_passage=config.mode == "single",
            split_lines=config.mode != "cpt",
            split_sentences=config.split_sentences,
            max_answer_tokens=config.max_answer_tokens,
            self_edit_format=config.self_edit_format,
            reward_metric="log_likelihood",  # the rows are compared by their metrics; no control passages needed
        )
        all_rows = available_rows(self.passages, config.generator is not None, self.model_label)
        if config.rows:
            known = {r.key for r in all_rows}
            unknown = [key for key in config.rows if key not in known]
            if unknown:
                raise ValueError(f"unknown row(s) {unknown}; available: {sorted(known)}")
            all_rows = [r for r in all_rows if r.key in config.rows]
        self.rows = [r for r in all_rows if not (config.mode == "continual" and r.key == "base")]
        if not self.rows:
            raise ValueError("no rows to run (in continual mode the base model is step 0 of every row)")
        provenance = self._provenance()
        self.log = ResultLog(
            config.out / f"{config.mode}.log.jsonl",
            {**provenance, "mode": config.mode, "n_passages": config.n_passages},
            ("row", "step") if config.mode == "continual" else ("row", "passage"),
        )
        samplers = {"untrained": self.env.model}
        if config.generator is not None and any(r.key == "generator" for r in self.rows):
            samplers["generator"] = load_generator(config.generator, self.env.model)
        sample_settings = ("seed", "sample_tokens", "temperature", "self_edits_per_passage")
        self.self_edits = SelfEdits(
            self.env,
            ResultLog(
                config.out / "self_edits.jsonl",
                {
                    **{k: provenance[k] for k in ("data_sha256", "model", "generator_sha256")},
                    **{k: getattr(config, k) for k in sample_settings},
                    **self._later_settings(("first_passage", "self_edit_format")),
                },
                ("source", "passage"),
            ),
            samplers,
            config,
        )
        if config.reuse_rows_from is not None:
            self._reuse_rows(config.reuse_rows_from)

    def _reuse_rows(self, folder: Path) -> None:
        """Copy the units of the rows that do not depend on the generator, and their sampled
        self-edits, from an earlier run's logs (see ``BenchmarkConfig.reuse_rows_from``)."""
        path = folder / "single.log.jsonl"
        written, records = split_header(read_jsonl(path, repair=False), path)
        differing = [k for k in differing_settings(self.log.config, written) if k != "generator_sha256"]
        if differing:
            raise ValueError(f"--reuse-rows-from {folder}: its log was written with other settings ({', '.join(differing)} "
                             "differ), so its units are not this run's")
        rows = {row.key for row in self.rows if row.key != "generator"}
        indices = set(self._shard_indices())  # each shard copies its own passages: no line is written twice
        copied = [record for record in records if record["row"] in rows and record["passage"] in indices
                  and (record["row"], record["passage"]) not in self.log]
        for record in copied:
            self.log.append({**record, "reused_from": str(folder)})
        cache = folder / "self_edits.jsonl"
        if cache.is_file():
            self.self_edits.reuse(e for e in split_header(read_jsonl(cache, repair=False), cache)[1]
                                  if e["source"] in rows and e["passage"] in indices)
        print(f"reused {len(copied)} passage x row units from {folder}")

    def _shard_indices(self) -> list[int]:
        """The passages this process runs: all, or with ``--shard I/N`` those whose index is I modulo N."""
        shard = self.config.shard
        return [i for i in self.indices if shard is None or i % shard[1] == shard[0]]

    def _provenance(self) -> dict[str, Any]:
        """What the results depend on (a log written under other values is refused)."""
        c = self.config
        return {
            "data_sha256": file_digest(c.data),
            "model": c.model or self.model_label,
            "generator_sha256": file_digest(c.generator) if c.generator else None,
            "inner_loop": self.env.inner_loop.to_dict(),
            "self_edits_per_passage": c.self_edits_per_passage,
            "seed": c.seed,
            "sample_tokens": c.sample_tokens,
            "temperature": c.temperature,
            "max_answer_tokens": c.max_answer_tokens,
            **self._later_settings(),
        }

    def _later_settings(self, names: Sequence[str] = SETTINGS_ADDED_LATER) -> dict[str, Any]:
        """Those of ``names`` that are not at their default, for the logs' headers: a setting added after
        logs existed is absent at its default, so that logs written before it existed still resume."""
        defaults = BenchmarkConfig.__dataclass_fields__
        return {name: getattr(self.config, name) for name in names if getattr(self.config, name) != defaults[name].default}

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        if self.config.mode == "single":
            self._run_single()
            if self.config.shard is not None and not self._single_complete():
                index, count = self.config.shard
                print(f"shard {index}/{count} done; other shards are unfinished, so no outputs were written")
                return {"mode": "single", "shard": [index, count], "complete": False}
        elif self.config.mode == "cpt":
            self._run_cpt()
        else:
            self._run_continual()
        summary = self._summarise_continual() if self.config.mode == "continual" else self._summarise()
        summary["wall_seconds_this_invocation"] = time.perf_counter() - started
        self._write(summary)
        return summary

    # ------------------------------------------------------------------ single

    def _passage_only(self, index: int) -> dict[str, Any]:
        """The passage row's result for ``index`` (computed, not logged, when that row is not run):
        what a self-edit that could not be used amounts to."""
        record = self.log.get(("passage", index))
        return record if record is not None else self._single_passage(index)

    def _single_base(self, index: int) -> dict[str, Any]:
        start = time.perf_counter()
        evaluation = self.env.baseline(index)
        seconds = time.perf_counter() - start
        return {**_evaluation_record(evaluation), "seconds": seconds, "eval_seconds": seconds, "errors": []}

    def _single_passage(self, index: int) -> dict[str, Any]:
        start = time.perf_counter()
        out: dict[str, Any] = {}

        def keep(_: int, evaluation: Evaluation | None, seconds: float, __: TrainResult) -> None:
            out.update(evaluation=evaluation, eval_seconds=seconds)

        result = train_and_evaluate(self.env, [passage_example(self.env, self.passages[index])], [index], keep)
        errors = []
        if out["evaluation"] is None:  # a failed update is no update
            errors.append(f"passage update failed ({result.error}); scored as the base model")
            out["evaluation"] = self.env.baseline(index)
        return {
            **_evaluation_record(out["evaluation"]),
            "train": result.summary(),
            "seconds": time.perf_counter() - start,
            "eval_seconds": out["eval_seconds"],
            "errors": errors,
        }

    def _single_self_edits(self, row: Row, index: int) -> dict[str, Any]:
        texts, generate_seconds = self.self_edits.get(row, index)
        start = time.perf_counter()
        per_self_edit, errors = [], []
        for text in texts:
            self.env.reset(options={"index": index})
            _, reward, _, _, info = self.env.step(text)
            entry = {"text": text, "reward": reward, "error": info["error"], "notes": info["notes"]}
            entry.update(train_loss=info["train_loss"], n_train_examples=info["n_train_examples"])
            entry.update(train_seconds=float(info["train_seconds"]), eval_seconds=float(info["eval_seconds"]))
            if info["error"]:
                # An unusable self-edit adds nothing to the passage: score it as the passage alone.
                errors.append(f"self-edit unusable ({info['error']}); scored as passage only")
                entry.update(metrics=self._passage_only(index)["metrics"], items=[])
            else:
                entry.update(metrics={m: info["metrics"][m] for m in METRICS}, items=info["items"])
            per_self_edit.append(entry)
        return {
            "metrics": _mean_metrics([e["metrics"] for e in per_self_edit]),
            "self_edits": per_self_edit,
            "generate_seconds": generate_seconds,
            "seconds": generate_seconds + time.perf_counter() - start,
            "eval_seconds": sum(e["eval_seconds"] for e in per_self_edit),
            "errors": errors,
        }

    def _single_complete(self) -> bool:
        """Whether every (row, passage) unit is in the log, reading what other shards appended."""
        self.log.reload()
        return all((row.key, i) in self.log for i in self.indices for row in self.rows)

    def _run_single(self) -> None:
        indices = self._shard_indices()
        todo = [(i, row) for i in indices for row in self.rows if (row.key, i) not in self.log]
        for index, row in tqdm(todo, desc="passage x row", disable=not todo):
            if row.kind == "none":
                record = self._single_base(index)
            elif row.kind == "passage":
                record = self._single_passage(index)
            else:
                record = self._single_self_edits(row, index)
            self._append_passage(row, index, record)

    # ------------------------------------------------------------------ cpt

    def _training_examples(self, row: Row, index: int, errors: list[str]) -> list[TrainingExample]:
        """cpt / continual: the passage once, then every self-edit of the row (unusable ones skipped
        and noted in ``errors``)."""
        passage = self.passages[index]
        examples = [passage_example(self.env, passage)]
        if row.kind in ("external", "restatement", "sampled"):
            for text in self.self_edits.get(row, index)[0]:
                try:
                    examples += self.env.self_edit_to_examples(text, passage)
                except SelfEditError as exc:
                    errors.append(f"passage {index}: self-edit unusable ({exc}); skipped")
        return examples

    def _run_cpt(self) -> None:
        for row in tqdm(self.rows, desc="cpt rows"):
            missing = [i for i in self.indices if (row.key, i) not in self.log]
            if not missing:
                continue
            if row.kind == "none":
                for index in missing:
                    self._append_passage(row, index, self._single_base(index))
                continue
            errors: list[str] = []
            examples = [e for i in self.indices for e in self._training_examples(row, i, errors)]
            sampling = sum(self.self_edits.get(row, i)[1] for i in self.indices) if row.kind == "sampled" else 0.0

            def log_evaluation(
                index: int, evaluation: Evaluation | None, seconds: float, result: TrainResult, row: Row = row
            ) -> None:
                notes = list(errors)
                if evaluation is None:
                    notes.append(f"the update failed ({result.error}); scored as the base model")
                    evaluation = self.env.baseline(index)
                record = {
                    **_evaluation_record(evaluation),
                    "train": result.summary(),
                    # sampling and training serve all N passages: each is charged 1/N of them
                    "seconds": (sampling + result.seconds) / len(self.indices) + seconds,
                    "eval_seconds": seconds,
                    "errors": notes,
                }
                self._append_passage(row, index, record)

            train_and_evaluate(self.env, examples, missing, log_evaluation)

    def _append_passage(self, row: Row, index: int, record: dict[str, Any]) -> None:
        n_questions = len(self.passages[index].questions)
        self.log.append({"row": row.key, "passage": index, "n_questions": n_questions, **record})

    # ------------------------------------------------------------------ continual

    def _run_continual(self) -> None:
        for row in tqdm(self.rows, desc="continual rows"):
            done = {step for step in range(len(self.indices) + 1) if (row.key, step) in self.log}
            errors: list[str] = []

            def examples_for(_learner: Any, index: int, row: Row = row) -> list[TrainingExample]:
                return self._training_examples(row, index, errors)

            def on_step(step: ContinualStep, row: Row = row) -> None:
                self.log.append({"row": row.key, **step.to_dict(), "errors": list(errors)})

            run_continual(self.env, self.indices, examples_for, done_steps=done, on_step=on_step)

    # ------------------------------------------------------------------ outputs

    def _records(self, row: Row, units: Sequence[int]) -> list[dict[str, Any]]:
        """The logged records of ``row`` for ``units`` (passages, or continual steps), in order."""
        records = [self.log.get((row.key, unit)) for unit in units]
        if any(r is None for r in records):
            raise RuntimeError(f"row {row.key!r} is incomplete; run the benchmark again to finish it")
        return records

    def _summarise(self) -> dict[str, Any]:
        c = self.config
        rows, per_row = [], {}
        for row in self.rows:
            records = self._records(row, self.indices)
            per_row[row.key] = records
            weights = [r["n_questions"] for r in records]
            seconds = [r["seconds"] for r in records]
            rows.append(
                {
                    "key": row.key,
                    "name": row.name,
                    "n_passages": len(records),
                    "n_questions": int(sum(weights)),
                    "metrics": {
                        m: bootstrap_ci(
                            [r["metrics"][m] for r in records], weights, n_resamples=c.bootstrap_resamples, seed=c.seed
                        ).to_dict()
                        for m in METRICS
                    },
                    "seconds_per_passage": {"median": float(np.median(seconds)), "mean": float(np.mean(seconds))},
                    "n_errors": sum(len(r["errors"]) for r in records),
                    "paper_accuracy": PAPER_RESULTS[c.mode].get(row.key),
                }
            )
        def paired(key: str, reference: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
            return paired_difference(per_row[key], reference, n_resamples=c.bootstrap_resamples, seed=c.seed)

        for entry in rows:
            if "passage" in per_row and entry["key"] not in ("passage", "base"):
                entry["vs_passage"] = paired(entry["key"], per_row["passage"])  # the paper's question
            if entry["key"] == "generator" and "untrained" in per_row:
                entry["vs_untrained"] = paired("generator", per_row["untrained"])  # did RL help?
        return self._summary_header() | {"rows": rows}

    def _summary_header(self) -> dict[str, Any]:
        c = self.config
        return {
            "mode": c.mode,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(c).items()},
            "inner_loop": self.env.inner_loop.to_dict(),
            "n_passages": len(self.indices),
            "environment": run_environment(),
            "paper": PAPER_RESULTS.get(c.mode),
        }

    def _summarise_continual(self) -> dict[str, Any]:
        rows = []
        n = len(self.indices)
        for row in self.rows:
            records = self._records(row, range(n + 1))
            steps = [ContinualStep.from_dict(record) for record in records]
            matrices = {m: forgetting_matrix(steps, m) for m in METRICS}
            summary = {}
            for m, matrix in matrices.items():
                just_learnt = np.array([matrix[j + 1, j] for j in range(n)])
                at_end = matrix[n]
                summary[m] = {
                    "base": float(np.mean(matrix[0])),
                    "just_learnt": float(np.mean(just_learnt)),
                    "at_end": float(np.mean(at_end)),
                    # mean drop of a passage's score from right after it was learnt to the end of
                    # the stream (the last passage has no later updates and is left out)
                    "forgetting": float(np.mean(just_learnt[:-1] - at_end[:-1])) if n > 1 else 0.0,
                }
            rows.append(
                {
                    "key": row.key,
                    "name": row.name,
                    "n_passages": n,
                    "summary": summary,
                    # JSON has no NaN: cells not scored (passages not learnt yet) are null
                    "matrix": {m: [[None if math.isnan(v) else v for v in r] for r in mat.tolist()] for m, mat in matrices.items()},
                    "train_seconds": [s.train["seconds"] for s in steps if s.train],
                    "step_seconds": [s.seconds for s in steps],
                    "errors": sorted({e for record in records for e in record["errors"]}),
                }
            )
        return self._summary_header() | {"rows": rows}

    def _write(self, summary: dict[str, Any]) -> None:
        out, mode = self.config.out, self.config.mode
        write_results(out / f"{mode}.json", summary,
                      markdown_continual(summary) if mode == "continual" else markdown_results(summary))
        if mode == "continual":
            plot_heat_maps(summary, out)
        else:
            plot_bars(summary, out / f"{mode}.png")


# ---------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> BenchmarkConfig:
    """The command line is :class:`BenchmarkConfig` (one option per field, help from its docstring)."""
    return parse_config(BenchmarkConfig, argv, __doc__.split("\n\n")[0], required=("data", "out"))


def main(argv: Sequence[str] | None = None) -> int:
    return main_exit_code("knowledge_incorporation", lambda: Benchmark(parse_args(argv)).run())


if __name__ == "__main__":
    sys.exit(main())
