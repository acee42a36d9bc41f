"""A passages file whose ``self_edits`` sets are logged rows' self-edits, as written and edited.

To ask what one trait of a generator's self-edits does, step the same texts with and without it:
this reads the self-edits that knowledge-benchmark runs sampled for some of their rows (their
``self_edits.jsonl``) and writes a copy of the passages file with, for each source ``NAME`` (not the
name of a built-in row of the benchmark, such as ``untrained``), three
external sets per passage:

* ``NAME`` - the texts as logged;
* ``NAME-deduplicated`` - each text without its repeated sentences (a sentence whose words already
  occurred, in order, earlier in the text, which also drops a sentence cut off by the token limit
  when it restarts an earlier one);
* ``NAME-sentence-lines`` - each text with one sentence per line, as the restatement writes the
  passage (the environment trains on every non-empty line as one example, so this changes how many
  examples, and optimiser steps, the same words make; stepping it is stepping the texts as logged
  in an environment with ``split_sentences=True``).

Line breaks other than ``\\n`` (a vertical tab a generator wrote, which the environment refuses as a
control character) are written as ``\\n`` in every set: the environment splits a self-edit into the
same lines either way. ``knowledge_incorporation.py --data <written file> --rows NAME,NAME-deduplicated``
then steps them, and ``compare_rows.py`` pairs them::

    python benchmarks/derive_self_edits.py --data ../shared/data/squad_eval_passages.json \\
        --sources results/learning_run/eval_50_rewrite_plus_recall_k3:generator:recall \\
        --out runs/derived/passages.json

Passages a run did not sample for keep their file's sets only. Prints what each edit changed (mean
trigram repetition, lines and words per self-edit) and writes it beside the file as
``<out stem>.summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from _common import main_exit_code, markdown_table, trigram_repetition, words, write_json
from _knowledge_report import data_index
from knowledge_incorporation import available_rows
from seal_env.config_cli import parse_config
from seal_env.jsonl import read_jsonl, split_header
from seal_env.tasks.knowledge import parse_passages, sentence_lines, sentences


def deduplicate_sentences(text: str) -> str:
    """``text`` without the sentences whose words (lower-cased alphanumeric runs) already occurred
    as a contiguous run earlier in it; lines left empty are dropped, the others keep their order."""
    seen = " "  # the kept words so far, space-delimited, so that a match is whole words
    kept_lines = []
    for line in text.splitlines():
        kept = []
        for sentence in sentences(line):
            joined = " ".join(words(sentence))
            if not joined or f" {joined} " in seen:
                continue
            kept.append(sentence)
            seen += f"{joined} "
        if kept:
            kept_lines.append(" ".join(kept))
    return "\n".join(kept_lines)


# The edited sets a source gets, by the suffix of their names.
EDITS: dict[str, Callable[[str], str]] = {"deduplicated": deduplicate_sentences, "sentence-lines": sentence_lines}


def _split_source(text: str) -> tuple[Path, str, str]:
    folder, row, name = (text.strip().rsplit(":", 2) + ["", ""])[:3]
    if not folder or not row or not name:
        raise argparse.ArgumentTypeError(f"expected RUN_FOLDER:ROW:NAME, got {text!r}")
    return Path(folder), row, name


@dataclass
class DeriveConfig:
    """Settings of a derivation; the command line maps one to one onto these fields."""

    data: Path
    """Passages JSON (the layout of squad_eval_passages.json) the runs evaluated."""
    out: Path
    """The passages file to write (a new file: an existing one is refused)."""
    sources: list[tuple[Path, str, str]] = field(
        default_factory=list, metadata={"parse": lambda text: [_split_source(t) for t in text.split(",") if t.strip()]}
    )
    """``RUN_FOLDER:ROW:NAME,...``: the row of a knowledge-benchmark run whose sampled self-edits
    (``RUN_FOLDER/self_edits.jsonl``) become the sets ``NAME`` and ``NAME-<edit>``."""


def _logged_texts(folder: Path, row: str) -> dict[int, list[str]]:
    """The row's sampled self-edits by the index of their passage in the data file."""
    cache = folder / "self_edits.jsonl"
    if not cache.is_file():
        raise FileNotFoundError(f"{cache}: no sampled self-edits (a knowledge_incorporation.py --out folder)")
    settings, entries = split_header(read_jsonl(cache, repair=False), cache)
    logged = {data_index(settings, e): e["texts"] for e in entries if e["source"] == row}
    if not logged:
        raise ValueError(f"{cache}: no self-edits of row {row!r}")
    return logged


def _traits(texts: list[str]) -> dict[str, float]:
    return {
        "trigram_repetition": sum(map(trigram_repetition, texts)) / len(texts),
        "lines": sum(sum(1 for line in t.splitlines() if line.strip()) for t in texts) / len(texts),
        "words": sum(len(words(t)) for t in texts) / len(texts),
    }


def derive(config: DeriveConfig) -> dict[str, Any]:
    """Write the derived passages file; return what each edit changed."""
    if not config.sources:
        raise ValueError("no sources: give --sources RUN_FOLDER:ROW:NAME,...")
    if config.out.exists():
        raise ValueError(f"{config.out} exists: give a new --out")
    names = [name for _, _, name in config.sources]
    if len(set(names)) < len(names):
        raise ValueError(f"source names repeat: {', '.join(names)}")
    passages = json.loads(config.data.read_text(encoding="utf-8"))
    summary: dict[str, Any] = {"data": str(config.data), "sources": []}
    sampled: set[int] = set()
    for folder, row, name in config.sources:
        logged = _logged_texts(folder, row)
        sampled |= set(logged)
        if max(logged) >= len(passages):
            raise ValueError(f"{folder} sampled for passage {max(logged)}, but {config.data} has {len(passages)}")
        sets: dict[str, list[str]] = {name: [], **{f"{name}-{edit}": [] for edit in EDITS}}
        for index, raw in sorted(logged.items()):
            per_passage = {name: ["\n".join(t.splitlines()) for t in raw]}
            per_passage.update({f"{name}-{edit}": [apply(t) for t in per_passage[name]] for edit, apply in EDITS.items()})
            passages[index]["self_edits"] = {**(passages[index].get("self_edits") or {}), **per_passage}
            for key, texts in per_passage.items():
                sets[key] += texts
        summary["sources"].append({
            "run": str(folder), "row": row, "name": name, "passages": len(logged),
            "sets": {key: {**_traits(texts), "changed": sum(a != b for a, b in zip(sets[name], texts))}
                     for key, texts in sets.items()},
        })
    # The knowledge benchmark's own checks (usable text, set names that are not built-in rows), before writing.
    available_rows(parse_passages([passages[i] for i in sorted(sampled)], str(config.out)), False, "")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(passages, ensure_ascii=False), encoding="utf-8")
    write_json(config.out.with_suffix(".summary.json"), summary)
    return summary


def markdown(summary: dict[str, Any]) -> str:
    rows = [[f"{key} ({source['run']}:{source['row']})", source["passages"], t["changed"],
             f"{t['trigram_repetition']:.2f}", f"{t['lines']:.1f}", f"{t['words']:.0f}"]
            for source in summary["sources"] for key, t in source["sets"].items()]
    return ("Mean per self-edit; changed: self-edits the edit altered.\n\n"
            + markdown_table(["set", "passages", "changed", "trigram repetition", "lines", "words"], rows))


def main(argv: Sequence[str] | None = None) -> int:
    def work() -> None:
        config = parse_config(DeriveConfig, argv, __doc__.split("\n\n")[0], required=("data", "sources", "out"))
        print(markdown(derive(config)))

    return main_exit_code("derive_self_edits", work)


if __name__ == "__main__":
    sys.exit(main())
