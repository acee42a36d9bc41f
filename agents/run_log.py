"""The run's append-only log (``steps.jsonl``) and the state a resumed run reads back from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.base import StepRecord
from agents.train_config import LOG_FILE
from seal_env.jsonl import JsonlLog, append_jsonl


class RunLog:
    """The run's append-only log and the state read back from it.

    Attributes:
        steps: logged step records by key ``(round, phase, context_index, sample)``.
        proposals: logged self-edits by ``(round, phase)``.
        rounds: metrics of the finished rounds, in order.
    """

    def __init__(self, directory: Path, rank: int = 0):
        self.directory = directory
        self.path = directory / (LOG_FILE if rank == 0 else f"steps.rank{rank}.jsonl")
        self.steps: dict[tuple[int, str, int, int], StepRecord] = {}
        self.proposals: dict[tuple[int, str], list[list[str]]] = {}
        self.rounds: list[dict[str, Any]] = []

    def read(self, *, repair: bool = True) -> None:
        """Load every log file of the run (all processes' step logs). A last line cut off by a crash
        is handled as :class:`seal_env.jsonl.JsonlLog` does, and with ``repair`` the file is fixed
        (a reader that must not write, or a run still writing, passes ``repair=False``); any other
        malformed line is an error."""
        for path in sorted(self.directory.glob("steps*.jsonl")):
            for entry in JsonlLog(path, repair=repair).records:
                kind = entry.pop("kind") if isinstance(entry, dict) else None
                if kind == "step":
                    record = StepRecord(**entry)
                    self.steps[record.key] = record
                elif kind == "proposals":
                    self.proposals[(entry["round"], entry["phase"])] = entry["self_edits"]
                elif kind == "round":
                    self.rounds.append(entry["metrics"])
                else:
                    raise ValueError(f"{path}: a line of unknown kind {kind!r}")
        self.rounds.sort(key=lambda m: m["round"])
        if [m["round"] for m in self.rounds] != list(range(len(self.rounds))):
            raise ValueError(f"{self.directory}: the log's finished rounds are not 0, 1, 2, ...")

    def records(self, round_index: int, phase: str) -> list[StepRecord]:
        """The logged steps of one round and phase, in key order."""
        return [record for key, record in sorted(self.steps.items()) if key[:2] == (round_index, phase)]

    def append(self, kind: str, entry: dict[str, Any]) -> None:
        append_jsonl(self.path, {"kind": kind, **entry})
