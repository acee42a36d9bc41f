"""The examples run as smoke tests on the real default model (slow: ~1 min on 2 cores)."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
def test_quickstart_runs_and_reports_the_evidence(capsys, default_lm):
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "reward" in out and "error: None" in out and "log-likelihood" in out


@pytest.mark.slow
def test_custom_task_subclass_registers_and_steps(capsys, default_lm):
    runpy.run_path(str(EXAMPLES / "custom_task.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "after vs" in out
    assert "uses none of the glossary's terms" in out
