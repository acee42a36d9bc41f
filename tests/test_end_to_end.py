"""End to end on the real embedded model: the SEAL effect is visible."""

import pytest

from seal_env import KnowledgeIncorporationEnv, load_passages
from conftest import weights_digest


@pytest.mark.slow
def test_restating_the_passage_raises_gold_answer_log_likelihood(default_lm):
    passage = load_passages()[0]
    env = KnowledgeIncorporationEnv([passage], model=default_lm, reward_metric="log_likelihood")
    before = weights_digest(env.model)
    env.reset(options={"index": 0})
    restated = "\n".join(s.strip() + "." for s in passage.context.split(". ") if s.strip())
    _, reward, _, _, info = env.step(restated)
    assert info["error"] is None
    assert info["metrics"]["log_likelihood"] > info["baseline_metrics"]["log_likelihood"]
    assert reward == 1.0
    assert weights_digest(env.model) == before
