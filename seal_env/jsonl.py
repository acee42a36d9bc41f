"""Append-only JSON-lines files that survive a crash at any byte.

The training job's log and the benchmarks' result logs are written one line per record and read
back to resume. A process killed mid-write leaves the last line cut at any byte: inside a multi-byte
UTF-8 character, inside the JSON, or just before its newline. :func:`read_jsonl` treats the bytes
after the last newline as the unfinished write: a complete record missing only its newline is kept,
anything else is dropped; ``repair=True`` then fixes the file (adds the newline, or cuts the
fragment) so that the next :func:`append_jsonl` starts on a line of its own.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path, *, repair: bool) -> list[Any]:
    """The records of a JSON-lines file, in order.

    Every newline-terminated line must hold one JSON value (``ValueError`` naming the line
    otherwise); blank lines are skipped. With ``repair=False`` the file is never written, so a reader
    may look at a log another process is still appending to.
    """
    path = Path(path)
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path}, line {number}: not valid JSON") from None
    if tail.strip():
        try:
            records.append(json.loads(tail.decode("utf-8")))
            complete = True
        except (UnicodeDecodeError, json.JSONDecodeError):
            complete = False
        if repair:
            if complete:
                _write_all(path, b"\n")
            else:
                warnings.warn(f"{path}: dropping the unfinished last line ({len(tail)} bytes) of an interrupted write")
                with path.open("r+b") as f:
                    f.truncate(len(data) - len(tail))
    return records


def append_jsonl(path: str | Path, record: Any) -> None:
    """Append ``record`` as one line and flush it to disk.

    The line goes out in one ``write()`` on an ``O_APPEND`` descriptor, so processes sharing a log
    (a benchmark's shards) do not interleave parts of their lines; a short write is completed.
    """
    _write_all(Path(path), (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))


def _write_all(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(f"{path}: write() wrote nothing")
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _start_with_header(path: Path, header: bytes) -> None:
    """Create ``path`` holding the line ``header``, unless it already has content.

    A benchmark's shards are often started together on one new log, and each would write the header
    if it checked and then wrote. So the header goes to a temporary file that is hard-linked into
    place: the link fails when the log already exists, and a reader never sees a half-written
    header. On a file system without hard links, or over an empty file, the header is appended.
    """
    if path.exists() and path.stat().st_size > 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
            return
        except FileExistsError:
            if path.stat().st_size > 0:  # another process started the log first
                return
        except OSError:  # no hard links here
            pass
        _write_all(path, header)
    finally:
        os.unlink(temporary)


def _is_header(line: Any) -> bool:
    return isinstance(line, dict) and set(line) == {"config"} and isinstance(line["config"], dict)


def split_header(lines: list[Any], path: str | Path) -> tuple[dict[str, Any], list[Any]]:
    """``(settings, records)`` of the lines of a log that starts with a ``{"config": ...}`` header
    (``ValueError`` otherwise).

    Shards started together by an earlier version could each write the header, so it may repeat;
    every copy must match the first, and none is a record.
    """
    if not lines or not _is_header(lines[0]):
        raise ValueError(f"{path}: the first line is not a {{'config': ...}} header")
    settings = lines[0]["config"]
    for header in filter(_is_header, lines[1:]):
        _check_same_settings(path, settings, header["config"])
    return settings, [line for line in lines if not _is_header(line)]


def differing_settings(expected: dict[str, Any], written: dict[str, Any]) -> list[str]:
    """The names of the settings whose values differ between two log headers' settings, sorted."""
    return sorted(k for k in set(written) | set(expected) if written.get(k) != expected.get(k))


def _check_same_settings(path: str | Path, expected: dict[str, Any], written: dict[str, Any]) -> None:
    """``ValueError`` naming the settings that differ, when the log at ``path`` was written with other
    settings than ``expected``."""
    differing = differing_settings(expected, written)
    if differing:
        raise ValueError(
            f"{path} was written with other settings ({', '.join(differing)} differ): "
            "use another output folder, or delete the log to start over"
        )


class JsonlLog:
    """An append-only JSON-lines log that a restarted job reads back: the one resumable log of the
    training run (``agents.run_log``) and of the benchmarks (``benchmarks/_common.ResultLog``).

    Opening reads every record already there (:func:`read_jsonl`, repairing a cut-off last line
    with ``repair``). With ``config``, the first line is a ``{"config": ...}`` header: a new log
    starts with it, and an existing log written with other settings is refused with a
    ``ValueError`` naming them (so that a job never resumes into another job's records).
    """

    def __init__(self, path: str | Path, *, config: dict[str, Any] | None = None, repair: bool = True):
        self.path = Path(path)
        self.config = config
        self.records: list[Any] = []
        if config is not None:
            _start_with_header(self.path, (json.dumps({"config": config}, ensure_ascii=False) + "\n").encode("utf-8"))
        if self.path.exists():
            self.reload(repair=repair)

    def reload(self, *, repair: bool = False) -> None:
        """Read the log again (taking in what other processes appended since)."""
        lines = read_jsonl(self.path, repair=repair)
        if self.config is not None and lines:
            written, lines = split_header(lines, self.path)
            _check_same_settings(self.path, self.config, written)
        self.records = lines

    def append(self, record: Any) -> None:
        """Write ``record`` as one line, flushed to disk, and keep it in :attr:`records`."""
        append_jsonl(self.path, record)
        self.records.append(record)
