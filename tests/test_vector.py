"""The batched vector environment (seal_env.vector) against single-environment steps."""

from __future__ import annotations

from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import seal_env  # noqa: F401  (registers the environment ids)
from seal_env.env import TrainingPlan
from seal_env.inner_loop import InnerLoopConfig
from seal_env.tasks import arc
from seal_env.tasks.arc_data import ArcTask
from seal_env.tasks.knowledge import KnowledgeIncorporationEnv
from seal_env.vector import SelfAdaptVectorEnv

# A learning rate high enough that a few steps move the tiny model's answer log-likelihoods well
# away from the baseline (so the rewards compared below are not decided by rounding).
INNER = InnerLoopConfig(rank=4, epochs=2, learning_rate=1e-2)
ACTIONS = (
    "The Velmora Bridge was designed by Talia Okonkwe-Brandt.\nIt opened to traffic in 1931.",
    "1. The bridge is painted deep ochre.\n2. Its towers are green granite.\n3. Its span is 1,240 metres.",
    "",  # unusable: reward 0.0 with an error, as in a single env
    "Velmora gold is the colour of the bridge.",
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def knowledge_kwargs(tiny_lm, **overrides):
    return dict(model=tiny_lm, inner_loop=INNER, max_answer_tokens=4, **overrides)


def single_steps(env_class, kwargs, seeds, actions, options=None):
    """What K independent single environments give for the same seeds and self-edits."""
    results = []
    for seed, action in zip(seeds, actions):
        env = env_class(**kwargs)
        env.reset(seed=seed, options=options)
        _, reward, _, _, info = env.step(action)
        results.append((reward, info))
    return results


def assert_matches(rewards, infos, expected):
    assert rewards.tolist() == [reward for reward, _ in expected]
    for k, (_, info) in enumerate(expected):
        assert infos["context_index"][k] == info["context_index"]
        assert infos["error"][k] == info["error"]
        assert infos["n_train_examples"][k] == info["n_train_examples"]
        if info["error"] is None:
            assert infos["score"][k] == pytest.approx(info["score"], abs=1e-4)
            assert infos["baseline_score"][k] == info["baseline_score"]
            assert infos["train_loss"][k] == pytest.approx(info["train_loss"], abs=1e-4)
            assert abs(info["gain"]) > 1e-3  # the reward is not a rounding coin-flip


def test_make_vec_reaches_the_batched_env_and_sync_mode_still_works(tiny_lm):
    batched = gym.make_vec("seal_env/KnowledgeIncorporation-v0", num_envs=3, **knowledge_kwargs(tiny_lm))
    assert isinstance(batched.unwrapped, SelfAdaptVectorEnv) and batched.batched
    assert batched.num_envs == 3 and batched.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    sync = gym.make_vec(
        "seal_env/KnowledgeIncorporation-v0", num_envs=3, vectorization_mode="sync", **knowledge_kwargs(tiny_lm)
    )
    assert type(sync) is SyncVectorEnv
    assert batched.single_action_space == sync.single_action_space
    assert batched.observation_space == sync.observation_space
    assert batched.reset(seed=5)[0] == sync.reset(seed=5)[0]


def test_rewards_equal_single_env_steps_with_the_same_seeds(tiny_lm):
    kwargs = knowledge_kwargs(tiny_lm)
    envs = SelfAdaptVectorEnv(KnowledgeIncorporationEnv, len(ACTIONS), **kwargs)
    _, reset_info = envs.reset(seed=11)
    _, rewards, terminations, truncations, infos = envs.step(ACTIONS)
    expected = single_steps(KnowledgeIncorporationEnv, kwargs, [11 + k for k in range(len(ACTIONS))], ACTIONS)
    assert reset_info["context_index"].tolist() == [info["context_index"] for _, info in expected]
    assert_matches(rewards, infos, expected)
    assert terminations.all() and not truncations.any()
    assert rewards.sum() >= 1  # some self-edit did help, so equality is not all zeros


def test_controlled_rewards_equal_single_env_steps(tiny_lm):
    """The control passages' questions are routed to each slot's own adapter in the batched evaluation."""
    kwargs = knowledge_kwargs(tiny_lm, reward_metric="controlled_log_likelihood", control_passages=2)
    envs = SelfAdaptVectorEnv(KnowledgeIncorporationEnv, len(ACTIONS), **kwargs)
    envs.reset(seed=11)
    _, rewards, _, _, infos = envs.step(ACTIONS)
    expected = single_steps(KnowledgeIncorporationEnv, kwargs, [11 + k for k in range(len(ACTIONS))], ACTIONS)
    assert_matches(rewards, infos, expected)
    for k, (_, info) in enumerate(expected):
        if info["error"] is None:
            assert infos["metrics"]["control_log_likelihood"][k] == pytest.approx(
                info["metrics"]["control_log_likelihood"], abs=1e-4)


def test_one_context_for_all_or_one_each(tiny_lm):
    envs = SelfAdaptVectorEnv(KnowledgeIncorporationEnv, 2, **knowledge_kwargs(tiny_lm))
    observations, infos = envs.reset(options={"index": 3})
    assert infos["context_index"].tolist() == [3, 3]
    assert observations["prompt"][0] == observations["prompt"][1]
    _, infos = envs.reset(options={"indices": [4, 0]})
    assert infos["context_index"].tolist() == [4, 0]
    with pytest.raises(ValueError, match="needs 2 context indices"):
        envs.reset(options={"indices": [1]})


def test_autoreset_modes_follow_sync_vector_env(tiny_lm):
    # Unusable self-edits keep this cheap: the bookkeeping is what is tested.
    nothing = ("", "")
    envs = SelfAdaptVectorEnv(KnowledgeIncorporationEnv, 2, **knowledge_kwargs(tiny_lm))
    envs.reset(seed=0)
    _, _, terminations, _, _ = envs.step(nothing)
    assert terminations.all()
    _, rewards, terminations, _, infos = envs.step(nothing)  # NEXT_STEP: this step only resets
    assert not terminations.any() and rewards.tolist() == [0.0, 0.0] and "error" not in infos

    same = SelfAdaptVectorEnv(KnowledgeIncorporationEnv, 2, autoreset_mode="SameStep", **knowledge_kwargs(tiny_lm))
    same.reset(seed=0)
    _, _, terminations, _, infos = same.step(nothing)
    assert terminations.all() and infos["_final_info"].all()
    assert infos["final_info"]["error"][0] == "self-edit is empty or whitespace only"


class RankFromSelfEdit(KnowledgeIncorporationEnv):
    """Self-edits that choose their own LoRA rank (as ARC's choose their settings)."""

    def plan_training(self, self_edit, passage):
        rank = 8 if "wide" in self_edit else 4
        return TrainingPlan(self.self_edit_to_examples(self_edit, passage), InnerLoopConfig(rank=rank, epochs=2, learning_rate=1e-2))


def test_self_edits_with_different_lora_ranks_train_in_separate_groups(tiny_lm):
    actions = ("The bridge opened in 1931.", "A wide bridge designed by Talia Okonkwe-Brandt.", "It is painted ochre.")
    kwargs = knowledge_kwargs(tiny_lm)
    envs = SelfAdaptVectorEnv(RankFromSelfEdit, 3, **kwargs)
    envs.reset(seed=2, options={"index": 0})
    _, rewards, _, _, infos = envs.step(actions)
    assert_matches(rewards, infos, single_steps(RankFromSelfEdit, kwargs, [2, 3, 4], actions, {"index": 0}))


class CustomStep(KnowledgeIncorporationEnv):
    def step(self, action):
        observation, reward, terminated, truncated, info = super().step(action)
        info["custom"] = True
        return observation, reward, terminated, truncated, info


def test_a_task_with_its_own_step_is_stepped_one_by_one(tiny_lm):
    envs = SelfAdaptVectorEnv(CustomStep, 2, **knowledge_kwargs(tiny_lm))
    assert not envs.batched
    envs.reset(seed=0)
    _, _, _, _, infos = envs.step(("The bridge opened in 1931.", ""))
    assert infos["custom"].all()


def test_few_shot_arc_vector_env_matches_single_steps(tiny_lm):
    flip = ArcTask(
        "flip",
        train=tuple((np.array(x), np.fliplr(np.array(x))) for x in ([[1, 0], [2, 3]], [[0, 4], [5, 0]], [[6, 7], [0, 0]])),
        test=((np.array([[8, 0], [0, 9]]), np.array([[0, 8], [9, 0]])),),
    )
    # Two self-edits that choose different learning rates, epochs and losses.
    actions = [
        replace(arc.EXAMPLE_SELF_EDIT, learning_rate=1e-2, num_train_epochs=1).to_json(),
        replace(arc.EXAMPLE_SELF_EDIT, learning_rate=3e-2, num_train_epochs=2, strategy="train_using_all_tokens").to_json(),
    ]
    kwargs = dict(
        tasks=[flip],
        model=tiny_lm,
        baseline="base",
        reward_metric="log_likelihood",
        budget=arc.ArcBudget(max_ttt_examples=3),
        inner_loop=InnerLoopConfig(rank=4),
    )
    envs = gym.make_vec("seal_env/FewShotARC-v0", num_envs=2, **kwargs)
    envs.reset(seed=0)
    _, rewards, _, _, infos = envs.step(tuple(actions))
    expected = single_steps(arc.FewShotARCEnv, kwargs, [0, 1], actions)
    assert rewards.tolist() == [reward for reward, _ in expected]
    for k, (_, info) in enumerate(expected):
        assert info["error"] is None and infos["error"][k] is None
        assert infos["score"][k] == pytest.approx(info["score"], abs=1e-4)
