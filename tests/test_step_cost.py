"""benchmarks/step_cost.py on the tiny model: every phase measured for both setups, and the ratio."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import step_cost  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_step_cost_reports_each_phase_before_and_after(tiny_model_dir, tmp_path):
    out = tmp_path / "step_cost.json"
    assert step_cost.main(["--model", str(tiny_model_dir), "--contexts", "2", "--samples", "2", "--max-new-tokens", "8",
                           "--num-envs", "2", "--generation-batch-size", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["self_edits"] == 4
    for setup in ("before", "after"):
        costs = result["seconds_per_self_edit"][setup]
        assert all(costs[phase] >= 0 for phase in step_cost.PHASES)
        assert costs["total"] == pytest.approx(sum(costs[phase] for phase in step_cost.PHASES))
    ratio = result["before_over_after"]["total"]
    assert ratio == pytest.approx(result["seconds_per_self_edit"]["before"]["total"]
                                  / result["seconds_per_self_edit"]["after"]["total"])
    assert isinstance(result["same_rewards"], bool)
    assert "before / after" in out.with_suffix(".md").read_text(encoding="utf-8")
