"""The environment contract (DESIGN.md) on the knowledge-incorporation env with a tiny model."""

import json

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import seal_env  # noqa: F401  (registers the ids)
from conftest import PASSAGES, weights_digest
from seal_env import InnerLoopConfig, KnowledgeIncorporationEnv, load_passages
from seal_env.env import Seconds
from seal_env.tasks.knowledge import parse_passages, self_edit_lines, sentence_lines

FAST = InnerLoopConfig(epochs=1)
SELF_EDIT = "1. Talia Norwin designed the Velmora Bridge.\n2. The Velmora Bridge is painted ochre."
INFO_KEYS = {"score", "baseline_score", "gain", "train_loss", "n_train_examples", "n_train_tokens",
             "train_seconds", "eval_seconds", "items", "error", "metrics", "baseline_metrics", "notes", "context_index"}


@pytest.fixture
def env(tiny_lm):
    return KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, inner_loop=FAST, max_answer_tokens=4)


def test_reset_and_step_follow_the_gymnasium_contract(env):
    obs, info = env.reset(seed=0, options={"index": 0})
    assert obs in env.observation_space and set(obs) == {"prompt", "context"}
    assert "Talia Norwin" in obs["prompt"] and "Implications" in obs["prompt"]
    assert info["context_index"] == 0
    obs, reward, terminated, truncated, info = env.step(SELF_EDIT)
    assert obs in env.observation_space
    assert reward in (0.0, 1.0) and type(reward) is float
    assert terminated is True and truncated is False
    assert INFO_KEYS <= set(info)
    assert info["error"] is None and info["n_train_examples"] == 2
    assert reward == float(info["score"] > info["baseline_score"])
    assert info["gain"] == pytest.approx(info["score"] - info["baseline_score"])
    assert [item["question"] for item in info["items"]] == [q.question for q in PASSAGES[0].questions]
    assert {"prediction", "exact_match", "f1", "contains", "log_likelihood"} <= set(info["items"][0])


def test_action_space_accepts_real_self_edits(env):
    assert "Ünïcode — “quotes”, emoji 🌉\nand newlines" in env.action_space
    assert "x" * (env.max_self_edit_chars + 1) not in env.action_space
    assert 42 not in env.action_space


def test_step_leaves_base_weights_unchanged(env):
    before = weights_digest(env.model)
    env.reset(options={"index": 0})
    env.step(SELF_EDIT)
    assert weights_digest(env.model) == before


def test_same_seed_gives_same_reward_and_scores(tokenizer):
    from conftest import make_tiny_model

    results = []
    for _ in range(2):
        env = KnowledgeIncorporationEnv(PASSAGES, model=(make_tiny_model(tokenizer), tokenizer), inner_loop=FAST,
                                        max_answer_tokens=4)
        obs, _ = env.reset(seed=7)
        _, reward, _, _, info = env.step(SELF_EDIT)
        results.append((obs, reward, info["score"], info["baseline_score"], info["items"]))
    assert results[0] == results[1]


@pytest.mark.parametrize(
    "bad_self_edit, reason",
    [
        ("", "empty"),
        ("   \t  ", "empty"),
        ("\n\n\n", "empty"),
        ("x" * 1_000_000, "limit"),
        ("a fact\x00with a NUL", "control character"),
        ("bell \x07 ring", "control character"),
        ("lone \ud800 surrogate", "surrogate"),
        ("- \n* \n1. ", "no usable lines"),
        (b"bytes are not text", "must be a str"),
    ],
)
def test_bad_self_edit_gives_zero_reward_and_an_error(env, bad_self_edit, reason):
    before = weights_digest(env.model)
    env.reset(options={"index": 0})
    _, reward, terminated, _, info = env.step(bad_self_edit)
    assert reward == 0.0 and terminated
    assert info["error"] and reason in info["error"]
    assert info["score"] is None and info["n_train_examples"] == 0
    assert weights_digest(env.model) == before


def test_nan_loss_gives_zero_reward_and_leaves_the_model(tiny_lm):
    env = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, inner_loop=InnerLoopConfig(learning_rate=1e30, epochs=2),
                                    max_answer_tokens=4)
    before = weights_digest(env.model)
    env.reset(options={"index": 0})
    _, reward, _, _, info = env.step(SELF_EDIT)
    assert reward == 0.0 and "non-finite" in info["error"]
    assert weights_digest(env.model) == before


def test_baseline_is_computed_once_per_context(env, monkeypatch):
    calls = []
    original = env.evaluate
    monkeypatch.setattr(env, "evaluate", lambda model, p: calls.append(p.title) or original(model, p))
    for _ in range(2):
        env.reset(options={"index": 1})
        env.step("Quell Lake lies in the Tarn Valley.")
    assert calls.count("Quell Lake") == 3  # one baseline + two adapted evaluations
    env.clear_baseline_cache()
    env.reset(options={"index": 1})
    env.step("Quell Lake lies in the Tarn Valley.")
    assert calls.count("Quell Lake") == 5


def test_passage_baseline_and_margin(tiny_lm):
    env = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, inner_loop=FAST, baseline="passage",
                                    reward_margin=1e9, max_answer_tokens=4)
    env.reset(options={"index": 0})
    _, reward, _, _, info = env.step(SELF_EDIT)
    base_only = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, inner_loop=FAST, max_answer_tokens=4)
    assert info["baseline_score"] != base_only.baseline(0).score  # the passage-trained model is the baseline
    assert reward == 0.0  # no gain clears an enormous margin


def test_options_and_render(env, tiny_lm):
    with pytest.raises(RuntimeError, match="reset"):
        env.step(SELF_EDIT)
    with pytest.raises(ValueError, match="index"):
        env.reset(options={"index": 99})
    ansi = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, inner_loop=FAST, render_mode="ansi", max_answer_tokens=4)
    ansi.reset(options={"index": 0})
    ansi.step("")
    assert "rejected" in ansi.render()
    with pytest.raises(ValueError, match="render_mode"):
        KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, render_mode="human")
    with pytest.raises(ValueError, match="reward_metric"):
        KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, reward_metric="bleu")


@pytest.mark.parametrize("fmt, word", [("rewrite", "rewrite"), ("self-qa", "questions"), ("implications-long", "long")])
def test_other_self_edit_formats_change_the_prompt(tiny_lm, fmt, word):
    env = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, self_edit_format=fmt)
    obs, _ = env.reset(options={"index": 0})
    assert word in obs["prompt"]


def test_include_passage_and_whole_self_edit_options(tiny_lm):
    env = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, include_passage=True, split_lines=False)
    examples = env.self_edit_to_examples(SELF_EDIT, PASSAGES[0])
    assert [e.completion for e in examples] == [f"{PASSAGES[0].title}\n{PASSAGES[0].context}", SELF_EDIT]


def test_split_sentences_trains_each_sentence_of_each_line_without_list_markers(tiny_lm):
    env = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, split_sentences=True)
    self_edit = "1. Talia Norwin designed it. It is ochre!\n2. It opened in 1999? Yes\n\n- A U.S. team helped."
    examples = env.self_edit_to_examples(self_edit, PASSAGES[0])
    assert [e.completion for e in examples] == [
        "Talia Norwin designed it.", "It is ochre!", "It opened in 1999?", "Yes", "A U.S.", "team helped."]
    assert sentence_lines("One. Two!\n\nThree? Four") == "One.\nTwo!\nThree?\nFour"
    # Off (the default), the same text is three lines: the layout decides the number of updates.
    assert len(KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm).self_edit_to_examples(self_edit, PASSAGES[0])) == 3
    with pytest.raises(ValueError, match="split_lines"):
        KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, split_sentences=True, split_lines=False)


def test_split_sentences_steps_a_self_edit_as_its_sentence_lines_are_stepped(tiny_lm):
    """What derive_self_edits' NAME-sentence-lines sets measured is what the option rewards."""
    self_edit = "Talia Norwin designed the Velmora Bridge. It is painted ochre. Norwin was born in Oslo."
    split = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, inner_loop=FAST, split_sentences=True, answer_generation=False)
    lines = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, inner_loop=FAST, answer_generation=False)
    infos = []
    for env, text in ((split, self_edit), (lines, sentence_lines(self_edit)), (lines, self_edit)):
        env.reset(seed=0, options={"index": 0})
        infos.append(env.step(text)[-1])
    assert infos[0]["n_train_examples"] == infos[1]["n_train_examples"] == 3 and infos[2]["n_train_examples"] == 1
    assert infos[0]["score"] == pytest.approx(infos[1]["score"], abs=1e-6)
    assert infos[0]["score"] != pytest.approx(infos[2]["score"], abs=1e-6)


def test_self_edit_lines_strip_markers_and_preamble():
    text = "Sure, here are some implications:\n1. First fact.\n2) Second fact.\n\n- Third.\n* \n"
    assert self_edit_lines(text) == ["First fact.", "Second fact.", "Third."]
    assert self_edit_lines("A plain line.\nAnother one.") == ["A plain line.", "Another one."]


def test_gym_make_and_check_env(tiny_lm):
    env = gym.make("seal_env/KnowledgeIncorporation-v0", passages=PASSAGES, model=tiny_lm, inner_loop=FAST,
                   max_answer_tokens=4)
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=1)
    assert obs in env.observation_space


def test_seconds_compare_equal_but_keep_their_value():
    assert Seconds(1.5) == Seconds(9.0) and float(Seconds(1.5)) == 1.5
    assert json.loads(json.dumps({"t": Seconds(2.5)})) == {"t": 2.5}


# ------------------------------------------------------------------ data files


def test_builtin_demo_set_is_large_enough():
    passages = load_passages()
    assert len(passages) >= 30 and all(len(p.questions) >= 3 for p in passages)
    assert all(q.answers[0] in p.context for p in passages for q in p.questions)


def test_official_squad_layout_is_read(tmp_path):
    squad = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "Ochre is a colour.", "qas": [{"id": "1", "question": "What is ochre?",
                                                  "answers": [{"text": "a colour", "answer_start": 9}]}]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad))
    (passage,) = load_passages(path)
    assert passage.title == "T" and passage.questions[0].answers == ("a colour",)


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "invalid JSON"),
        ("[]", "no passages"),
        ('{"passages": []}', "expected a list"),
        ('[{"title": "x", "questions": [{"question": "q", "answer": "a"}]}]', "missing key 'context'"),
        ('[{"context": "c", "questions": []}]', "'questions' must be a non-empty list"),
        ('[{"context": "c", "questions": [{"question": "q", "answer": ""}]}]', "question 0"),
        ('[{"context": "c", "questions": [{"question": "q", "answer": "a"}], "self_edits": {"m": "s"}}]', "self_edits"),
    ],
)
def test_malformed_data_file_error_names_file_and_problem(tmp_path, content, problem):
    path = tmp_path / "bad_passages.json"
    path.write_text(content)
    with pytest.raises(ValueError) as excinfo:
        load_passages(path)
    assert "bad_passages.json" in str(excinfo.value) and problem in str(excinfo.value)


def test_missing_data_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such passages file"):
        load_passages(tmp_path / "nope.json")


def test_parse_passages_keeps_external_self_edits():
    (passage,) = parse_passages([{"context": "c", "questions": [{"question": "q", "answer": "a"}],
                                  "self_edits": {"gpt-4.1": ["1. x"]}}])
    assert passage.self_edits == {"gpt-4.1": ["1. x"]}


def test_title_prefix_and_question_topic_put_the_title_in_training_and_questions(tiny_lm):
    plain = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, inner_loop=FAST)
    titled = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, inner_loop=FAST, title_prefix=True, question_topic=True)
    examples = titled.self_edit_to_examples(SELF_EDIT, PASSAGES[0])
    assert [e.completion for e in examples] == [f"Velmora Bridge\n{e.completion}" for e in plain.self_edit_to_examples(SELF_EDIT, PASSAGES[0])]
    prompts = titled.question_prompts(PASSAGES[0])
    assert all("Topic: Velmora Bridge\n" + q.question in p for p, q in zip(prompts, PASSAGES[0].questions))
    assert not any("Topic:" in p or PASSAGES[0].context in p for p in plain.question_prompts(PASSAGES[0]))
    assert PASSAGES[0].context not in "".join(prompts)  # still closed-book


def test_answer_pmi_is_the_question_likelihood_minus_the_neutral_one(tiny_lm):
    from seal_env.scoring import answer_log_likelihoods

    model, tokenizer = tiny_lm
    env = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, inner_loop=FAST, reward_metric="answer_pmi", max_answer_tokens=2)
    evaluation = env.evaluate(model, PASSAGES[0])
    golds = [q.answers[0] for q in PASSAGES[0].questions]
    asked = answer_log_likelihoods(model, tokenizer, env.question_prompts(PASSAGES[0]), golds)
    neutral = answer_log_likelihoods(model, tokenizer, env.neutral_prompts(PASSAGES[0]), golds)
    assert [item["answer_pmi"] for item in evaluation.items] == pytest.approx([a - n for a, n in zip(asked, neutral)], abs=1e-4)
    assert evaluation.score == evaluation.metrics["answer_pmi"] == pytest.approx(sum(asked) / 2 - sum(neutral) / 2, abs=1e-4)
    env.reset(options={"index": 0})
    _, reward, _, _, info = env.step(SELF_EDIT)
    assert info["gain"] == pytest.approx(info["metrics"]["answer_pmi"] - info["baseline_metrics"]["answer_pmi"])


def test_recall_metrics_score_the_passage_and_its_answer_sentences_after_the_title(tiny_lm):
    from seal_env.scoring import answer_log_likelihoods
    from seal_env.tasks.knowledge import Passage, Question, answer_sentences

    model, tokenizer = tiny_lm
    passage = Passage("Velmora Bridge", "It spans the Kell. Talia Norwin designed it! It is ochre.",
                      (Question("Who designed it?", ("Talia Norwin",)), Question("What colour?", ("ochre", "Ochre"))))
    assert answer_sentences(passage) == ["Talia Norwin designed it!", "It is ochre."]
    unanswered = Passage("", "No answer here. None here either.", (Question("Q?", ("absent",)),))
    assert answer_sentences(unanswered) == ["No answer here. None here either."]
    env = KnowledgeIncorporationEnv([passage, *PASSAGES], model=tiny_lm, inner_loop=FAST,
                                    reward_metric="answer_sentence_log_likelihood", answer_generation=False)
    evaluation = env.evaluate(model, passage)
    whole = answer_log_likelihoods(model, tokenizer, ["Velmora Bridge\n"], [passage.context])[0]
    sentences = answer_log_likelihoods(model, tokenizer, ["Velmora Bridge\n"] * 2, answer_sentences(passage))
    assert evaluation.metrics["passage_log_likelihood"] == pytest.approx(whole, abs=1e-4)
    assert evaluation.score == evaluation.metrics["answer_sentence_log_likelihood"] == pytest.approx(sum(sentences) / 2, abs=1e-4)
    env.reset(options={"index": 0})
    _, _, _, _, info = env.step("Talia Norwin designed the Velmora Bridge. It is ochre.")
    assert info["gain"] == pytest.approx(info["metrics"]["answer_sentence_log_likelihood"]
                                         - info["baseline_metrics"]["answer_sentence_log_likelihood"])


@pytest.mark.parametrize("metric", ["log_likelihood", "answer_pmi"])
def test_skipping_answer_generation_leaves_the_dense_reward_and_score_unchanged(tiny_lm, metric):
    results = []
    for generation in (True, False):
        env = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, inner_loop=FAST, reward_metric=metric,
                                        answer_generation=generation, max_answer_tokens=4)
        env.reset(options={"index": 0})
        _, reward, _, _, info = env.step(SELF_EDIT)
        results.append((reward, info))
    (reward, full), (skipped_reward, skipped) = results
    assert skipped_reward == reward and skipped["score"] == full["score"] and skipped["baseline_score"] == full["baseline_score"]
    assert set(skipped["metrics"]) == {"log_likelihood", "answer_pmi", "passage_log_likelihood",
                                       "answer_sentence_log_likelihood"} and "contains" in full["metrics"]
    assert "prediction" not in skipped["items"][0] and "prediction" in full["items"][0]
    with pytest.raises(ValueError, match="answer_generation=False"):
        KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, reward_metric="f1", answer_generation=False)


def test_control_passages_are_fixed_others_and_the_controlled_score_subtracts_them(tiny_lm):
    from seal_env.scoring import answer_log_likelihoods

    model, tokenizer = tiny_lm
    passages = load_passages(None)[:6]
    env = KnowledgeIncorporationEnv(passages, model=tiny_lm, inner_loop=FAST, max_answer_tokens=2,
                                    reward_metric="controlled_log_likelihood", control_passages=2)
    assert [env.controls_of(p) for p in passages[:2]] == [[passages[2], passages[4]], [passages[3], passages[5]]]
    evaluation = env.evaluate(model, passages[0])
    controls = env.controls_of(passages[0])
    expected = answer_log_likelihoods(model, tokenizer, [p for c in controls for p in env.question_prompts(c)],
                                      [q.answers[0] for c in controls for q in c.questions])
    assert evaluation.metrics["control_log_likelihood"] == pytest.approx(sum(expected) / len(expected), abs=1e-4)
    assert evaluation.score == evaluation.metrics["controlled_log_likelihood"] == pytest.approx(
        evaluation.metrics["log_likelihood"] - evaluation.metrics["control_log_likelihood"])
    env.reset(options={"index": 0})
    _, reward, _, _, info = env.step(SELF_EDIT)
    own = info["metrics"]["log_likelihood"] - info["baseline_metrics"]["log_likelihood"]
    control = info["metrics"]["control_log_likelihood"] - info["baseline_metrics"]["control_log_likelihood"]
    assert info["gain"] == pytest.approx(own - control, abs=1e-5)  # only what moved this passage's answers more
    assert reward == float(info["gain"] > 0)


def test_control_passages_are_checked(tiny_lm):
    with pytest.raises(ValueError, match="needs control_passages >= 1"):
        KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, reward_metric="controlled_log_likelihood", control_passages=0)
    with pytest.raises(ValueError, match="with one, pass reward_metric='log_likelihood'"):
        KnowledgeIncorporationEnv(PASSAGES[:1], model=tiny_lm)  # the default reward needs a control passage
    assert KnowledgeIncorporationEnv(PASSAGES[:1], model=tiny_lm, reward_metric="log_likelihood").control_passages == 0
    with pytest.raises(ValueError, match="at least 3 passages"):
        KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, control_passages=2)
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="non-negative int"):
            KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, control_passages=bad)
    plain = KnowledgeIncorporationEnv(PASSAGES, model=tiny_lm, inner_loop=FAST, max_answer_tokens=2,
                                      reward_metric="log_likelihood")
    assert "control_log_likelihood" not in plain.evaluate(tiny_lm[0], PASSAGES[0]).metrics
