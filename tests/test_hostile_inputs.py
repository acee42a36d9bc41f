"""Hostile inputs, generated: what a model (or a careless user) may write never crashes a step.

Properties, for the knowledge and ARC environments and the data loaders:

* ``step()`` never raises, whatever the self-edit;
* an unusable self-edit gets reward exactly 0.0 and a message in ``info["error"]``;
* every number in ``info`` is finite, or None when it was not measured;
* the inner model's base weights are bit-identical after every step;
* the loaders return data or raise ``ValueError`` naming the source, nothing else.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import info_numbers, make_tiny_model, weights_digest
from seal_env import InnerLoopConfig, KnowledgeIncorporationEnv, load_passages
from seal_env.env import SelfEditError, check_self_edit_text
from seal_env.models import load_tokenizer
from seal_env.tasks.arc import EXAMPLE_SELF_EDIT, ArcBudget, FewShotARCEnv, parse_self_edit
from seal_env.tasks.arc_data import load_json_tasks, task_from_dict
from seal_env.tasks.knowledge import parse_passages
from test_arc_env import MIRROR_TASK
from test_knowledge_env import PASSAGES

FUZZ = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SLOW = settings(deadline=None, max_examples=12, suppress_health_check=[HealthCheck.too_slow])

# Any code point, surrogates and control characters included, with the tokens and markers that a
# chat model writes most often.
ANY_CHARACTER = st.characters(codec=None, categories=None)
PIECES = st.sampled_from(
    ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "\n", "1. ", "- ", "{", "}", "\ud800", "\x00", "\u202e",
     "Talia Norwin", "🌉", " " * 8, "\t"]
)
TEXT = st.lists(st.one_of(st.text(ANY_CHARACTER, max_size=30), PIECES), max_size=12).map("".join)
ACTION = st.one_of(TEXT, st.none(), st.integers(), st.binary(max_size=20), st.lists(st.text(max_size=5), max_size=3))
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(ANY_CHARACTER, max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def lm():
    tokenizer = load_tokenizer(None)
    return make_tiny_model(tokenizer), tokenizer


@pytest.fixture(scope="module")
def knowledge_env(lm):
    return KnowledgeIncorporationEnv(PASSAGES, model=lm, inner_loop=InnerLoopConfig(rank=2, epochs=1), max_answer_tokens=2)


@pytest.fixture(scope="module")
def arc_env(lm):
    return FewShotARCEnv([MIRROR_TASK], model=lm, budget=ArcBudget(max_ttt_examples=1, epochs_range=(1, 1)))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def check_step(env, action, *, unusable: bool) -> None:
    before = weights_digest(env.model)
    env.reset(options={"index": 0})
    _, reward, terminated, truncated, info = env.step(action)  # must not raise
    assert terminated and not truncated and reward in (0.0, 1.0)
    if unusable:
        assert reward == 0.0 and info["error"], (action, info["error"])
    if info["error"]:
        assert reward == 0.0 and info["score"] is None and isinstance(info["error"], str)
    assert all(math.isfinite(n) for n in info_numbers(info)), info
    assert weights_digest(env.model) == before


@FUZZ
@given(action=ACTION)
def test_knowledge_step_survives_any_action(knowledge_env, action):
    unusable = not isinstance(action, str) or check_self_edit_text(action, knowledge_env.max_self_edit_chars) is not None
    check_step(knowledge_env, action, unusable=unusable)


UNUSABLE_TEXT = st.one_of(
    st.text(st.sampled_from(" \t\n\r\u3000\u00a0"), max_size=20),  # empty or whitespace only
    st.tuples(TEXT, st.characters(codec=None, categories=["Cs", "Cc"], exclude_characters="\n\t\r"), TEXT).map("".join),
    st.builds(lambda text, n: (text or "x") * n, TEXT, st.integers(16_001, 20_000)),  # over the length limit
)


@FUZZ
@given(action=UNUSABLE_TEXT)
def test_knowledge_step_rejects_blank_control_surrogate_and_over_long_text(knowledge_env, action):
    check_step(knowledge_env, action, unusable=True)


def arc_text(draw_value, where: str) -> str:
    config = EXAMPLE_SELF_EDIT.to_dict()
    section, key = where.split(".")
    config[section][key] = draw_value
    return json.dumps(config)


ARC_FIELDS = st.sampled_from(
    ["training.strategy", "training.learning_rate", "training.num_train_epochs", "data_generation.use_basic_augmentations"]
)


@FUZZ
@given(value=JSON_VALUE, where=ARC_FIELDS, prefix=TEXT, suffix=TEXT)
def test_arc_parser_raises_only_self_edit_errors(value, where, prefix, suffix):
    text = prefix + arc_text(value, where) + suffix
    try:
        parse_self_edit(text)
    except SelfEditError:
        pass


@FUZZ
@given(text=TEXT | st.builds(lambda n: "{" * n + "}" * n, st.integers(1, 5000)) | st.builds(
    lambda digits: EXAMPLE_SELF_EDIT.to_json().replace("0.001", "1" + "0" * digits), st.integers(300, 5000)))
def test_arc_parser_survives_free_text_deep_nesting_and_huge_numbers(text):
    try:
        parse_self_edit(text)
    except SelfEditError:
        pass


@FUZZ_SLOW
@given(value=JSON_VALUE, where=ARC_FIELDS)
def test_arc_step_survives_any_configuration_value(arc_env, value, where):
    text = arc_text(value, where)
    try:
        parse_self_edit(text)
        unusable = False
    except SelfEditError:
        unusable = True
    check_step(arc_env, text, unusable=unusable)


# --- data loaders ----------------------------------------------------------------------------------

PASSAGE_LIKE = st.lists(
    st.fixed_dictionaries(
        {"context": JSON_VALUE | st.text(ANY_CHARACTER, max_size=20),
         "questions": JSON_VALUE | st.lists(st.fixed_dictionaries({"question": JSON_VALUE, "answer": JSON_VALUE}), max_size=2)},
        optional={"title": JSON_VALUE, "answers": JSON_VALUE, "self_edits": JSON_VALUE},
    ),
    max_size=3,
)
SQUAD_LIKE = st.fixed_dictionaries(
    {"data": st.lists(st.fixed_dictionaries(
        {"title": JSON_VALUE, "paragraphs": JSON_VALUE | st.lists(st.fixed_dictionaries(
            {"context": JSON_VALUE, "qas": JSON_VALUE | st.lists(st.fixed_dictionaries(
                {"question": JSON_VALUE, "answers": JSON_VALUE}), max_size=2)}), max_size=2)}), max_size=2)}
)


@FUZZ
@given(data=JSON_VALUE | PASSAGE_LIKE | SQUAD_LIKE)
def test_passages_parser_returns_passages_or_a_value_error_naming_the_source(data):
    try:
        passages = parse_passages(data, "fuzz.json")
    except ValueError as exc:
        assert "fuzz.json" in str(exc)
        return
    for passage in passages:  # what it accepts is usable text
        texts = [passage.title, passage.context] + [t for q in passage.questions for t in (q.question, *q.answers)]
        assert all(isinstance(t, str) for t in texts)
        assert all(check_self_edit_text(t, 10**9) is None for t in texts if t)
        assert passage.context.strip() and all(q.question.strip() for q in passage.questions)


@FUZZ
@given(raw=st.one_of(
    st.binary(max_size=200),
    TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
    JSON_VALUE.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda n, open_, close: open_ * n + close * n, st.integers(1, 100_000), st.sampled_from([b"[", b'{"a":']),
              st.sampled_from([b"]", b"}", b""])),  # nesting too deep for a recursive reader
    st.integers(4_300, 6_000).map(lambda digits: b"[" + b"7" * digits + b"]"),  # over Python's int-digit limit
))
def test_loaders_read_any_bytes_as_data_or_a_value_error_naming_the_file(raw, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "input.json"
    path.write_bytes(raw)
    for load in (load_passages, load_json_tasks):
        try:
            load(path)
        except ValueError as exc:
            assert str(path) in str(exc)


@FUZZ
@given(data=JSON_VALUE | st.fixed_dictionaries({"train": JSON_VALUE, "test": JSON_VALUE}))
def test_arc_task_parser_returns_a_task_or_a_value_error(data):
    try:
        task_from_dict("fuzz", data, source="fuzz.json")
    except ValueError as exc:
        assert "fuzz.json" in str(exc)
