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


@pytest.mark.slow
def test_the_default_controlled_reward_rewards_a_restatement_and_not_another_passage(default_lm):
    env = KnowledgeIncorporationEnv(model=default_lm, answer_generation=False)  # the defaults, built-in passages
    assert env.reward_metric == "controlled_log_likelihood" and env.control_passages == 1
    passage, other = env.contexts[0], env.contexts[5]
    restate = lambda p: "\n".join(s.strip() + "." for s in p.context.split(". ") if s.strip())  # noqa: E731
    gains = {}
    for name, text in (("restatement", restate(passage)), ("other passage", restate(other))):
        env.reset(options={"index": 0})
        _, reward, _, _, info = env.step(text)
        own = info["metrics"]["log_likelihood"] - info["baseline_metrics"]["log_likelihood"]
        control = info["metrics"]["control_log_likelihood"] - info["baseline_metrics"]["control_log_likelihood"]
        assert info["gain"] == pytest.approx(own - control, abs=1e-5)
        gains[name] = (reward, info["gain"])
    assert gains["restatement"][0] == 1.0 and gains["restatement"][1] > gains["other passage"][1]
