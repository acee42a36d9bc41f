"""Reliability fixes of issue #13: hostile self-edits, divergence, reset indices (one test per point).

Logs, output folders and reproducibility of ``seal-env train`` are tested in ``test_train_cli.py``;
the data loaders in ``test_data_loaders.py``; generated hostile inputs in ``test_hostile_inputs.py``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from agents.base import StepRequest
from agents.stepping import SequentialStepper, VectorStepper
from conftest import info_numbers, weights_digest
from seal_env import InnerLoopConfig, KnowledgeIncorporationEnv
from seal_env.tasks.arc import EXAMPLE_SELF_EDIT, ArcBudget, FewShotARCEnv, parse_self_edit
from seal_env.env import SelfEditError
from seal_env.vector import SelfAdaptVectorEnv
from test_arc_env import MIRROR_TASK
from test_knowledge_env import PASSAGES

ONE_LINE = "Talia Norwin designed the Velmora Bridge."
# One optimiser step whose loss is finite, but whose update leaves the adapter's outputs NaN.
DIVERGING = InnerLoopConfig(learning_rate=1e20, epochs=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_finite_info(info):
    assert all(math.isfinite(n) for n in info_numbers(info)), info


# --- 2. model-written ARC text -----------------------------------------------------------------


def arc_self_edit(**training) -> str:
    config = EXAMPLE_SELF_EDIT.to_dict()
    config["training"].update(training)
    return json.dumps(config)


@pytest.mark.parametrize(
    "text, reason",
    [
        (arc_self_edit(strategy=["train_using_all_tokens"]), "training.strategy"),
        (arc_self_edit(strategy={"a": 1}), "training.strategy"),
        (arc_self_edit(learning_rate=None).replace("null", "1" + "0" * 309), "finite"),
        (arc_self_edit(learning_rate=None).replace("null", "-1" + "0" * 400), "finite"),
    ],
)
def test_arc_parser_rejects_unhashable_strategy_and_huge_integer_rates(text, reason):
    with pytest.raises(SelfEditError, match=reason):
        parse_self_edit(text)


def test_arc_step_turns_unhashable_strategy_into_zero_reward(tiny_lm):
    env = FewShotARCEnv([MIRROR_TASK], model=tiny_lm, budget=ArcBudget(max_ttt_examples=3))
    env.reset(options={"index": 0})
    _, reward, _, _, info = env.step(arc_self_edit(strategy=["x"]))
    assert reward == 0.0 and "training.strategy" in info["error"]


# --- 3. divergence on the last optimiser step ----------------------------------------------------


def test_divergence_on_the_last_step_is_an_error_not_nan(tiny_lm):
    env = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, inner_loop=DIVERGING, max_answer_tokens=4)
    before = weights_digest(env.model)
    env.reset(options={"index": 0})
    _, reward, _, _, info = env.step(ONE_LINE)
    assert reward == 0.0 and "diverged" in info["error"]
    assert info["train_loss"] is not None and math.isfinite(info["train_loss"])  # the loss itself was finite
    assert info["score"] is None and info["gain"] is None
    assert_finite_info(info)
    assert weights_digest(env.model) == before


def test_divergence_in_the_vector_env_is_an_error_not_nan(tiny_lm):
    envs = SelfAdaptVectorEnv(KnowledgeIncorporationEnv, 2, passages=PASSAGES, model=tiny_lm,
                              inner_loop=DIVERGING, max_answer_tokens=4)
    envs.reset(options={"index": 0})
    _, rewards, _, _, infos = envs.step((ONE_LINE, ONE_LINE))
    assert rewards.tolist() == [0.0, 0.0]
    assert all("diverged" in error for error in infos["error"])
    assert all(score is None for score in infos["score"])


def test_an_unusable_self_edit_after_a_usable_one_in_a_batch_has_no_score_not_nan(tiny_lm):
    # Gymnasium batches "score" into a float array when the first slot has one; the unusable second
    # slot's None must stay None (a NaN score made a learning run's held-out mean NaN).
    envs = SelfAdaptVectorEnv(KnowledgeIncorporationEnv, 2, passages=PASSAGES, model=tiny_lm,
                              inner_loop=InnerLoopConfig(epochs=1), max_answer_tokens=4)
    requests = [StepRequest(0, 0, "", ONE_LINE), StepRequest(0, 1, "", ONE_LINE + "\x0b")]
    stepped = list(VectorStepper(envs)(requests))
    local = list(SequentialStepper(envs.env)(requests))
    assert [reward for reward, _ in stepped] == [reward for reward, _ in local]
    usable, unusable = (info for _, info in stepped)
    assert math.isfinite(usable["score"]) and "control character" in unusable["error"]
    assert unusable == local[1][1]  # score, gain, train_loss: None, as one environment reports them
    assert_finite_info(unusable)
    envs.reset(options={"index": 0})
    _, _, _, _, infos = envs.step((ONE_LINE, ONE_LINE + "\x0b"))  # the vector env's own infos too
    assert math.isfinite(infos["score"][0]) and infos["score"][1] is None and infos["train_loss"][1] is None


def test_divergence_in_arc_is_an_error_not_nan(tiny_lm):
    # The budget lets the self-edit's learning rate through unclamped.
    env = FewShotARCEnv([MIRROR_TASK], model=tiny_lm,
                        budget=ArcBudget(max_ttt_examples=1, learning_rate_range=(1e-5, 1e30), epochs_range=(1, 1)))
    env.reset(options={"index": 0})
    _, reward, _, _, info = env.step(arc_self_edit(learning_rate=1e25, num_train_epochs=1))
    assert reward == 0.0 and "diverged" in (info["error"] or "")
    assert_finite_info(info)


def test_diverging_passage_baseline_gives_zero_reward_instead_of_raising(tiny_lm):
    env = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, inner_loop=DIVERGING, baseline="passage",
                                    max_answer_tokens=4)
    for _ in range(2):  # the failure is cached like a baseline, and reported again
        env.reset(options={"index": 0})
        _, reward, _, _, info = env.step(ONE_LINE)
        assert reward == 0.0 and "baseline" in info["error"]
        assert info["baseline_score"] is None and info["score"] is None
        assert_finite_info(info)


# --- 8. reset indices ---------------------------------------------------------------------------


@pytest.mark.parametrize("index", [True, False, np.bool_(False), 0.0, "0", None, -1, 2])
def test_reset_rejects_bools_and_non_indices(tiny_lm, index):
    env = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm)
    with pytest.raises(ValueError, match="options\\['index'\\]"):
        env.reset(options={"index": index})


@pytest.mark.parametrize("index", [1, np.int64(1), np.int32(1), np.uint8(1)])
def test_reset_accepts_any_integer_type(tiny_lm, index):
    env = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm)
    _, info = env.reset(options={"index": index})
    assert info["context_index"] == 1 and type(info["context_index"]) is int
