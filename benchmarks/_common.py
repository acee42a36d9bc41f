"""Helpers shared by the benchmark scripts: bootstrap intervals, resumable result logs, output files.

Benchmarks are run as scripts (``python benchmarks/<name>.py``), which puts this folder on
``sys.path``; they import this module as ``_common``. Tests add the folder to ``sys.path`` themselves.

* :func:`bootstrap_ci` - percentile bootstrap interval of a (weighted) mean, resampling units such as
  passages or tasks (a cluster bootstrap when the weights are question counts); it lives in
  :mod:`agents.stats`, which the training job's report shares, with :func:`pearson`, :func:`spearman` and
  :func:`within_group_r`.
* :class:`ResultLog` - the project's resumable JSON-lines log (:class:`seal_env.jsonl.JsonlLog`)
  keyed by unit: a benchmark appends one record per finished unit of work and, when restarted on
  the same folder, skips every unit already in the log. A log written under another configuration
  is refused.
* :func:`load_generator` - a trained generator folder (PEFT adapter or full checkpoint) as a model.
* :func:`restatement` - a passage restated one sentence per line (the faithful stand-in self-edit
  several benchmarks step; the sentences are the knowledge environment's :func:`sentences`).
* :func:`words` - a text's words as the text measures count them; :func:`word_overlap`,
  :func:`word_coverage` - how much of a self-edit is its passage's words, and how
  much of the passage's vocabulary it carries.
* :func:`selection_differential` - how far the self-edits a selection kept stand above all of their
  context's samples (the one definition of "kept: extra ..." that every selection table uses).
* :func:`write_results` - a benchmark's JSON, its markdown table beside it, and the table printed;
  :func:`print_or_write` - that, or only the table printed when no output folder is given.
* :func:`main_exit_code` - a benchmark's ``main``: bad input is one line on stderr and exit status 2.
* :func:`file_digest`, :func:`finite_or_none`, :func:`write_json`, :func:`markdown_table`, :func:`format_interval`, :func:`run_environment`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import sys
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterator, Sequence

from agents.stats import Interval, bootstrap_ci, pearson, spearman, within_group_r  # noqa: F401  (re-exported for the benchmarks)
from seal_env.config_cli import parse_config
from seal_env.jsonl import JsonlLog
from seal_env.tasks.knowledge import sentences

if TYPE_CHECKING:
    import torch


def _normalise(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, paths strings), for comparisons."""
    return json.loads(json.dumps(value, default=str))


class ResultLog(JsonlLog):
    """The resumable log of a benchmark: :class:`seal_env.jsonl.JsonlLog` with a ``{"config": ...}``
    header and its records looked up by key.

    A record's key is the tuple of its ``key_fields``; :meth:`get` and ``in`` look records up by key,
    so a restarted benchmark skips what is done. Opening an existing log with a different
    configuration raises ``ValueError`` naming the settings that differ (use another folder, or
    delete the log to start over).
    """

    def __init__(self, path: str | Path, config: dict[str, Any], key_fields: Sequence[str]):
        self.key_fields = tuple(key_fields)
        self._index: dict[tuple, dict[str, Any]] = {}
        super().__init__(path, config=_normalise(config))

    def key(self, record: dict[str, Any]) -> tuple:
        """The key of a record: the values of its ``key_fields``."""
        return tuple(record[field] for field in self.key_fields)

    def reload(self, *, repair: bool = False) -> None:
        super().reload(repair=repair)
        self._index = {self.key(record): record for record in self.records}

    def __contains__(self, key: tuple[Hashable, ...]) -> bool:
        return tuple(key) in self._index

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._index.values())

    def get(self, key: tuple[Hashable, ...]) -> dict[str, Any] | None:
        return self._index.get(tuple(key))

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` (JSON-serialisable, with every key field) and flush it to disk; one write()
        per line, so that shards sharing the log never interleave."""
        record = _normalise(record)
        key = self.key(record)  # every key field present, before anything is written
        super().append(record)
        self._index[key] = record


def file_digest(path: Path) -> str:
    """SHA-256 of a file, or of every file of a folder (so that a changed generator is noticed)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def load_generator(path: Path, inner_model: torch.nn.Module) -> torch.nn.Module:
    """The generator in ``path``: a PEFT adapter applied to a private copy of the inner model (merged
    for fast sampling), or a full checkpoint folder loaded on its own."""
    if (path / "adapter_config.json").is_file():
        import copy

        from peft import PeftModel

        # from_pretrained injects the adapter into the model it is given: never the shared inner model.
        base = copy.deepcopy(inner_model)
        return PeftModel.from_pretrained(base, str(path), local_files_only=True).merge_and_unload().eval()
    from seal_env.models import load_model

    model, _ = load_model(path, device=next(inner_model.parameters()).device, shared=False)
    return model


def restatement(passage: str) -> str:
    """The passage restated one sentence per line: a faithful self-edit of a real self-edit's length."""
    return "\n".join(sentences(passage))


_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """The words of a text as every text measure here counts them: lower-cased alphanumeric runs."""
    return _WORD.findall(text.lower())


def word_overlap(self_edit: str, passage: str) -> float:
    """The share of the self-edit's words (lower-cased alphanumeric runs) that occur in the passage."""
    edit_words = words(self_edit)
    if not edit_words:
        return 0.0
    vocabulary = set(words(passage))
    return sum(word in vocabulary for word in edit_words) / len(edit_words)


def word_coverage(self_edit: str, passage: str) -> float:
    """The share of the passage's distinct words (lower-cased alphanumeric runs) that the self-edit
    contains: how much of the passage it carries, where :func:`word_overlap` is how much of it is copied."""
    vocabulary = set(words(passage))
    if not vocabulary:
        return 0.0
    return len(vocabulary & set(words(self_edit))) / len(vocabulary)


def trigram_repetition(text: str) -> float:
    """The share of the text's word trigrams (lower-cased alphanumeric runs) that occurred earlier in it."""
    text_words = words(text)
    trigrams = list(zip(text_words, text_words[1:], text_words[2:]))
    if not trigrams:
        return 0.0
    return 1.0 - len(set(trigrams)) / len(trigrams)


def selection_differential(values: Sequence[float], kept: Sequence[int]) -> float:
    """The kept samples' mean of ``values`` minus the mean over all of the context's samples, kept
    ones included (the selection differential). Several indices in ``kept`` are samples tied for
    best: each is kept with equal chance, so their mean is taken."""
    if not values or not kept:
        raise ValueError("selection_differential needs at least one sample and one kept index")
    mean = sum(values) / len(values)
    return sum(values[k] for k in kept) / len(kept) - mean


def finite_or_none(value: float) -> float | None:
    """``None`` for NaN (a correlation with nothing to correlate), which JSON cannot hold."""
    return None if math.isnan(value) else value


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (a reader never sees a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(f.name, path)


def write_results(json_path: str | Path, result: Any, markdown: str) -> None:
    """Write ``result`` as JSON at ``json_path`` and ``markdown`` beside it (``.md``), and print the
    markdown: what a benchmark leaves behind."""
    write_json(json_path, result)
    Path(json_path).with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(markdown)


def print_or_write(name: str, out: Path | None, summary: Any, table: str) -> None:
    """A summary's markdown table printed or, with ``out``, written with the numbers as
    ``<out>/<name>.json`` and ``<out>/<name>.md`` (:func:`write_results` prints it too)."""
    if out:
        write_results(out / f"{name}.json", summary, table)
    else:
        print(table)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned)."""

    def numeric(cell: Any) -> bool:
        return isinstance(cell, (int, float)) and not isinstance(cell, bool)

    align = ["---:" if rows and all(numeric(r[i]) for r in rows) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(map(str, header)) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def format_interval(interval: Interval | dict[str, float], *, scale: float = 1.0, digits: int = 1) -> str:
    """``"mean [low, high]"``, each multiplied by ``scale`` (100 for percentages)."""
    iv = interval if isinstance(interval, dict) else interval.to_dict()
    return f"{iv['mean'] * scale:.{digits}f} [{iv['low'] * scale:.{digits}f}, {iv['high'] * scale:.{digits}f}]"


def run_environment() -> dict[str, Any]:
    """Where a measurement ran: host, CPU count, torch version and device, for the JSON output."""
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main_exit_code(script: str, work: Callable[[], Any]) -> int:
    """Run a benchmark's ``work``: exit status 0, or 2 with one ``<script>: error: ...`` line on stderr
    (no traceback) when the input is bad (``ValueError``, ``FileNotFoundError``)."""
    try:
        work()
    except (ValueError, FileNotFoundError) as exc:
        print(f"{script}: error: {exc}", file=sys.stderr)
        return 2
    return 0


@dataclass
class RunSummaryConfig:
    """Settings of a summary of a `seal-env train` run's folder; the command line maps one to one onto
    these fields."""

    run_dir: Path
    """Output folder of a seal-env train run."""
    out: Path | None = None
    """Folder for the summary's JSON and markdown table (default: print only)."""
    bootstrap_resamples: int = 10_000
    """Bootstrap resamples of every interval."""


def run_summary_main(
    name: str,
    description: str,
    summarise: Callable[..., dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
    argv: Sequence[str] | None = None,
    config_class: type[RunSummaryConfig] = RunSummaryConfig,
) -> int:
    """The command line of a script that summarises a run folder: ``summarise(run_dir,
    n_resamples=..., **extra)`` then ``markdown(summary)``, printed and, with ``--out``, written as
    ``<out>/<name>.json`` and ``<out>/<name>.md``. ``config_class`` may add fields to
    :class:`RunSummaryConfig`: they are passed to ``summarise`` as ``extra`` keywords."""
    args = parse_config(config_class, argv, description, required=("run_dir",))
    extra = {f.name: getattr(args, f.name) for f in fields(config_class) if f.name not in RunSummaryConfig.__dataclass_fields__}

    def work() -> None:
        summary = summarise(args.run_dir, n_resamples=args.bootstrap_resamples, **extra)
        print_or_write(name, args.out, summary, markdown(summary))

    return main_exit_code(name, work)
