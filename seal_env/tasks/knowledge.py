"""Knowledge incorporation (SEAL §4.1): learn a passage's facts from self-written training data.

The observation asks for a self-edit of a passage (implications by default, as in the paper). Each
line of the self-edit becomes one training sequence; after the LoRA update the model answers the
passage's questions with NO passage in its prompt (closed-book QA), graded by SQuAD exact match and
token F1 and by whether the answer contains the gold span, plus the mean log-likelihood of the gold
answers as a dense score.
"""

from __future__ import annotations

import contextlib
import json
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from seal_env.data_files import read_json_file, require_text
from seal_env.env import Evaluation, SelfAdaptEnv, SelfEditError, TrainingPlan
from seal_env.lm import TrainingExample, chat_prompt, generate
from seal_env.scoring import answer_log_likelihoods, contains_answer, exact_match, token_f1


@dataclass(frozen=True)
class Question:
    question: str
    answers: tuple[str, ...]
    """Gold answers; the best-matching one counts."""


@dataclass(frozen=True)
class Passage:
    title: str
    context: str
    questions: tuple[Question, ...]
    self_edits: dict[str, list[str]] = field(default_factory=dict, compare=False, hash=False)
    """Optional self-edits written by external models, by generator name (benchmark data)."""


# The paper's self-edit formats (SEAL §B.3 and the release's data-generation templates).
SELF_EDIT_PROMPTS: dict[str, str] = {
    "implications": (
        "Let's read the following passage and produce a list of implications derived directly or "
        "indirectly from the content.\n\nPassage:\n{title}\n{context}\n\nImplications:\n"
    ),
    "implications-long": (
        "Let's read the following passage and produce a long list of detailed implications derived "
        "directly or indirectly from the content, one per line.\n\nPassage:\n{title}\n{context}\n\nImplications:\n"
    ),
    "rewrite": (
        "Let's read the following passage and rewrite it in a few different ways, each one separated "
        "by a newline.\n\nPassage:\n{title}\n{context}\n\nRewritten passages:\n"
    ),
    "self-qa": (
        "Let's read the following passage and then write questions about it, each followed by its "
        "answer, in the form 'Question: ... Answer: ...', one pair per line.\n\nPassage:\n{title}\n{context}\n\n"
        "Questions and answers:\n"
    ),
}

QUESTION_SYSTEM_PROMPT = "Answer the question with a short phrase. Do not explain."
NEUTRAL_QUESTION = "What is the answer?"
"""The question of the neutral prompt that ``answer_pmi`` compares each real question with."""
REWARD_METRICS = (
    "log_likelihood", "controlled_log_likelihood", "answer_pmi", "passage_log_likelihood",
    "answer_sentence_log_likelihood", "f1", "exact_match", "contains",
)
DENSE_METRICS = (
    "log_likelihood", "controlled_log_likelihood", "answer_pmi", "passage_log_likelihood", "answer_sentence_log_likelihood",
)
"""The reward metrics that need no generated answer."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    """The sentences of a text (split after ., ! or ? followed by white space), stripped, none empty."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def sentence_lines(text: str) -> str:
    """``text`` with one sentence per line (each line split into its sentences), nothing dropped."""
    return "\n".join(s for line in text.splitlines() for s in sentences(line))


def answer_sentences(passage: Passage) -> list[str]:
    """The sentences of the passage that hold a gold answer of one of its questions (case-insensitive),
    in passage order; the whole passage when no single sentence holds one."""
    answers = [a.lower() for q in passage.questions for a in q.answers]
    held = [s for s in sentences(passage.context) if any(a in s.lower() for a in answers)]
    return held or [passage.context]

_LIST_MARKER = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,3}[.)]|\(?[a-z][.)])(?:\s+|$)")


def self_edit_lines(self_edit: str) -> list[str]:
    """The non-empty lines of a self-edit with list markers ("1.", "-", "a)") removed.

    Follows the paper's rule for instruction-tuned generators: when the second line starts with
    "1.", the first line is preamble ("Sure, here are...") and is dropped.
    """
    lines = [line.strip() for line in self_edit.splitlines() if line.strip()]
    if len(lines) >= 2 and lines[1].startswith("1."):
        lines = lines[1:]
    return [text for text in (_LIST_MARKER.sub("", line).strip() for line in lines) if text]


def _check_passage(raw: Any, where: str) -> Passage:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
    for key in ("context", "questions"):
        if key not in raw:
            raise ValueError(f"{where}: missing key {key!r}")
    title = require_text(raw.get("title", ""), f"{where}: 'title'", allow_empty=True)
    context = require_text(raw["context"], f"{where}: 'context'")
    if not isinstance(raw["questions"], list) or not raw["questions"]:
        raise ValueError(f"{where}: 'questions' must be a non-empty list")
    questions = []
    for j, q in enumerate(raw["questions"]):
        at = f"{where}, question {j}"
        if not isinstance(q, dict) or "question" not in q:
            raise ValueError(f"{at}: expected {{'question': str, 'answer': str}}")
        question = require_text(q["question"], f"{at}: 'question'")
        if "answers" in q:
            answers = q["answers"]
            if not isinstance(answers, list) or not answers:
                raise ValueError(f"{at}: 'answers' must be a non-empty list of strings")
            if any(isinstance(a, dict) for a in answers):
                raise ValueError(
                    f"{at}: 'answers' must be strings; answer objects {{'text': ...}} belong in the SQuAD layout"
                )
            fields = [(f"'answers'[{k}]", a) for k, a in enumerate(answers)]
        elif "answer" in q:
            fields = [("'answer'", q["answer"])]
        else:
            raise ValueError(f"{at}: missing key 'answer' (or 'answers', a list)")
        golds = tuple(require_text(a, f"{at}: {name}") for name, a in fields)
        questions.append(Question(question, golds))
    self_edits = raw.get("self_edits", {})
    if not isinstance(self_edits, dict) or not all(isinstance(v, list) for v in self_edits.values()):
        raise ValueError(f"{where}: 'self_edits' must map generator names to lists of strings")
    for name, texts in self_edits.items():
        require_text(name, f"{where}: a 'self_edits' generator name")
        for k, text in enumerate(texts):
            # An empty self-edit is a generator's real output; the env reports it when stepped.
            require_text(text, f"{where}: 'self_edits'[{name!r}][{k}]", allow_empty=True)
    return Passage(title, context, tuple(questions), dict(self_edits))


def parse_passages(data: Any, source: str = "<data>") -> list[Passage]:
    """Passages from our layout ``[{title, context, questions: [{question, answer}]}]`` or from the
    official SQuAD v1.1 layout ``{"data": [{title, paragraphs: [{context, qas}]}]}``.

    ``title`` may be missing (= ""); every text must be a string free of control characters (other
    than newline, tab, carriage return) and lone surrogates, and all but titles and self-edits must
    be non-blank. Raises ``ValueError`` naming ``source`` and the problem.
    """
    if isinstance(data, dict) and "data" in data:  # official SQuAD layout, flattened into ours
        if not isinstance(data["data"], list):
            raise ValueError(f"{source}: SQuAD layout needs 'data' to be a list of articles")
        entries = []
        for a, article in enumerate(data["data"]):
            paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
            if not isinstance(paragraphs, list):
                raise ValueError(f"{source}: article {a}: expected an object with a list of 'paragraphs'")
            for p, paragraph in enumerate(paragraphs):
                where = f"{source}: article {a}, paragraph {p}"
                qas = paragraph.get("qas") if isinstance(paragraph, dict) else None
                if not isinstance(qas, list):
                    raise ValueError(f"{where}: expected an object with a list of 'qas'")
                questions = []
                for j, qa in enumerate(qas):
                    answers = qa.get("answers") if isinstance(qa, dict) else None
                    if not isinstance(answers, list) or not all(isinstance(x, dict) and "text" in x for x in answers):
                        raise ValueError(f"{where}, question {j}: 'answers' must be a list of {{'text': str}} objects")
                    questions.append({**qa, "answers": [x["text"] for x in answers]})
                entries.append((where, {**paragraph, "title": article.get("title", ""), "questions": questions}))
    elif isinstance(data, list):
        entries = [(f"{source}: passage {i}", raw) for i, raw in enumerate(data)]
    else:
        raise ValueError(f"{source}: expected a list of passages or a SQuAD v1.1 object with 'data'")
    if not entries:
        raise ValueError(f"{source}: no passages")
    return [_check_passage(raw, where) for where, raw in entries]


def load_passages(path: str | Path | None = None) -> list[Passage]:
    """Passages from a JSON file (see :func:`parse_passages`); ``None`` for the built-in demo set."""
    if path is None:
        text = resources.files("seal_env.data").joinpath("demo_passages.json").read_text(encoding="utf-8")
        return parse_passages(json.loads(text), "built-in demo_passages.json")
    path = Path(path)
    return parse_passages(read_json_file(path, "passages"), str(path))


class KnowledgeIncorporationEnv(SelfAdaptEnv[Passage]):
    """Learn a passage from a self-edit, then answer its questions without it.

    Args:
        passages: a list of :class:`Passage`, a path to a passages JSON file, or ``None`` for the
            built-in demo set (invented facts a small model cannot know already).
        self_edit_format: which prompt the observation carries: ``"implications"`` (default, as in
            the paper), ``"implications-long"``, ``"rewrite"`` or ``"self-qa"``.
        reward_metric: the score that decides the reward: ``"controlled_log_likelihood"`` (default:
            the mean per-token log-likelihood of the gold answers minus that of the control
            passages' questions, see ``control_passages``: only what the update taught about *this*
            passage counts, not damage or exposure that moves every answer alike; chosen by
            ``benchmarks/reward_validity.py``, see the README), ``"log_likelihood"`` (the gold
            answers' log-likelihood alone; dense, and the embedded model rarely gets answers
            exactly right, so text metrics are almost always 0), ``"answer_pmi"`` (the
            same log-likelihood minus the gold answer's log-likelihood after a neutral question,
            :data:`NEUTRAL_QUESTION`: what the model knows about *this question*, not how familiar
            the answer's words are), ``"f1"``, ``"exact_match"`` or ``"contains"``.
        baseline: ``"base"`` (the un-updated model, the paper's definition) or ``"passage"`` (the
            model updated on the raw passage alone: rewards self-edits that beat plain reading).
        include_passage: also train on the passage itself (the paper's "passage + self-edit").
        split_lines: one training sequence per line (paper's single-passage setting) or the whole
            self-edit as one sequence (its multi-passage setting).
        split_sentences: with ``split_lines``, one training sequence per *sentence*: every line is
            split after ., ! or ? (:func:`sentence_lines`) before list markers are removed. The
            environment takes one optimiser step per sequence, so without it the same words earn
            more steps, and more reward, when written over more lines; with it the layout of a
            self-edit no longer matters, only its sentences.
        title_prefix: start every training sequence with the passage's title (SEAL's release does),
            so that what is learnt is tied to the topic.
        question_topic: name the topic in each closed-book question ("Topic: {title}"), as SEAL's
            answer prompt does; a bare question is often ambiguous without its passage.
        control_passages: also score the gold log-likelihood of the questions of this many *other*
            passages, which the update should not move (``metrics["control_log_likelihood"]``, the
            mean over their questions). For the context at position ``i`` of ``n`` passages they are
            the passages at ``i + j * n // (control_passages + 1)``, ``j = 1..control_passages``
            (cyclically): fixed, and never the context itself. Default: 1 with the
            ``controlled_log_likelihood`` reward metric (which needs at least one), else 0.
        max_answer_tokens: greedy answer length.
        answer_generation: generate the greedy answers (default). ``False`` skips generation, the
            larger part of an evaluation, when the reward metric needs no text (one of
            :data:`DENSE_METRICS`): the reward and score are the same, but the text metrics (exact match,
            F1, containment) are left out of ``metrics`` and the items have no ``prediction``. For
            training steps; a held-out evaluation should keep every metric.
        **kwargs: see :class:`~seal_env.env.SelfAdaptEnv` (model, inner_loop, reward_margin, ...).
    """

    PASSAGE_LEVEL_ROWS_PER_PASS = 16
    """Texts scored per forward pass for the passage-level metrics (whole passages are long)."""

    def __init__(
        self,
        passages: Sequence[Passage] | str | Path | None = None,
        *,
        self_edit_format: str = "implications",
        reward_metric: str = "controlled_log_likelihood",
        baseline: str = "base",
        include_passage: bool = False,
        split_lines: bool = True,
        split_sentences: bool = False,
        title_prefix: bool = False,
        question_topic: bool = False,
        control_passages: int | None = None,
        max_answer_tokens: int = 24,
        answer_generation: bool = True,
        **kwargs: Any,
    ):
        if self_edit_format not in SELF_EDIT_PROMPTS:
            raise ValueError(f"self_edit_format must be one of {sorted(SELF_EDIT_PROMPTS)}, got {self_edit_format!r}")
        if reward_metric not in REWARD_METRICS:
            raise ValueError(f"reward_metric must be one of {REWARD_METRICS}, got {reward_metric!r}")
        if not answer_generation and reward_metric not in DENSE_METRICS:
            raise ValueError(f"answer_generation=False needs a reward metric without text, one of {DENSE_METRICS}")
        if split_sentences and not split_lines:
            raise ValueError("split_sentences=True needs split_lines=True (it splits the lines further)")
        if baseline not in ("base", "passage"):
            raise ValueError(f"baseline must be 'base' or 'passage', got {baseline!r}")
        if passages is None or isinstance(passages, (str, Path)):
            passages = load_passages(passages)
        controlled = reward_metric == "controlled_log_likelihood"
        if control_passages is None:
            control_passages = 1 if controlled else 0
        if isinstance(control_passages, bool) or not isinstance(control_passages, int) or control_passages < 0:
            raise ValueError(f"control_passages must be a non-negative int, got {control_passages!r}")
        if control_passages >= len(passages):
            hint = " (the controlled reward needs another passage: with one, pass reward_metric='log_likelihood')"
            raise ValueError(f"control_passages={control_passages} needs at least {control_passages + 1} passages, "
                             f"got {len(passages)}{hint if controlled else ''}")
        if controlled and control_passages < 1:
            raise ValueError("reward_metric='controlled_log_likelihood' needs control_passages >= 1")
        super().__init__(passages, **kwargs)
        self.self_edit_format = self_edit_format
        self.reward_metric = reward_metric
        self.baseline_mode = baseline
        self.include_passage = include_passage
        self.split_lines = split_lines
        self.split_sentences = split_sentences
        self.title_prefix = title_prefix
        self.question_topic = question_topic
        self.control_passages = control_passages
        self._positions = {id(passage): i for i, passage in enumerate(self.contexts)}
        self.max_answer_tokens = max_answer_tokens
        self.answer_generation = answer_generation

    def render_prompt(self, passage: Passage) -> str:
        return SELF_EDIT_PROMPTS[self.self_edit_format].format(title=passage.title, context=passage.context)

    def render_context(self, passage: Passage) -> str:
        return f"{passage.title}\n{passage.context}" if passage.title else passage.context

    def self_edit_to_examples(self, self_edit: str, passage: Passage) -> list[TrainingExample]:
        if not self.split_lines:
            texts = [self_edit.strip()]
        else:
            texts = self_edit_lines(sentence_lines(self_edit) if self.split_sentences else self_edit)
        if not texts:
            raise SelfEditError("self-edit has no usable lines")
        if self.title_prefix and passage.title:
            texts = [f"{passage.title}\n{text}" for text in texts]
        if self.include_passage:
            texts = [self.render_context(passage)] + texts
        return [TrainingExample(text) for text in texts]

    def baseline_plan(self, passage: Passage) -> TrainingPlan | None:
        if self.baseline_mode == "base":
            return None
        return TrainingPlan([TrainingExample(self.render_context(passage))], self.inner_loop)

    def question_prompts(self, passage: Passage) -> list[str]:
        """Closed-book prompts: the question (after its topic, with ``question_topic``), in the model's
        chat format; never the passage."""
        topic = f"Topic: {passage.title}\n" if self.question_topic and passage.title else ""
        return [
            chat_prompt(self.tokenizer, topic + q.question, system=QUESTION_SYSTEM_PROMPT) for q in passage.questions
        ]

    def neutral_prompts(self, passage: Passage) -> list[str]:
        """One prompt per question, with :data:`NEUTRAL_QUESTION` in place of the question (the topic
        kept): the gold answer's likelihood here is what ``answer_pmi`` subtracts."""
        topic = f"Topic: {passage.title}\n" if self.question_topic and passage.title else ""
        prompt = chat_prompt(self.tokenizer, topic + NEUTRAL_QUESTION, system=QUESTION_SYSTEM_PROMPT)
        return [prompt] * len(passage.questions)

    def controls_of(self, passage: Passage) -> list[Passage]:
        """The control passages of ``passage`` (see ``control_passages``)."""
        n, i = len(self.contexts), self._positions[id(passage)]
        return [self.contexts[(i + j * n // (self.control_passages + 1)) % n] for j in range(1, self.control_passages + 1)]

    def evaluate(self, model: torch.nn.Module, passage: Passage) -> Evaluation:
        return self.evaluate_batch(model, [passage], lambda owners: contextlib.nullcontext())[0]

    def evaluate_batch(
        self, model: torch.nn.Module, passages: Sequence[Passage], route: Callable[[Sequence[int]], AbstractContextManager]
    ) -> list[Evaluation]:
        """The questions of all passages in one batch, each row routed to its passage's adapter."""
        prompts, neutral, golds, owners = [], [], [], []
        for position, passage in enumerate(passages):
            prompts += self.question_prompts(passage)
            neutral += self.neutral_prompts(passage)
            golds += [q.answers[0] for q in passage.questions]
            owners += [position] * len(passage.questions)
        # One batch of all rows, so that every forward pass sees the rows in the order of ``owners``.
        with route(owners):
            predictions: list[str | None] = [None] * len(prompts)
            if self.answer_generation:
                predictions = [
                    out[0].strip()
                    for out in generate(
                        model, self.tokenizer, prompts, max_new_tokens=self.max_answer_tokens, batch_size=len(prompts)
                    )
                ]
            conditional = answer_log_likelihoods(model, self.tokenizer, prompts, golds, batch_size=len(prompts))
            unconditional = answer_log_likelihoods(model, self.tokenizer, neutral, golds, batch_size=len(prompts))
        passage_level = self._passage_level_log_likelihoods(model, passages, route)
        evaluations, start = [], 0
        for position, passage in enumerate(passages):
            end = start + len(passage.questions)
            evaluations.append(self._score(passage, predictions[start:end], conditional[start:end],
                                           unconditional[start:end], passage_level[position]))
            start = end
        return evaluations

    def _passage_level_log_likelihoods(
        self, model: torch.nn.Module, passages: Sequence[Passage], route: Callable[[Sequence[int]], AbstractContextManager]
    ) -> list[dict[str, float]]:
        """Per passage, the log-likelihood metrics that belong to no single question, each the mean
        over its texts: ``control_log_likelihood`` (the control passages' questions, with
        ``control_passages``), ``passage_log_likelihood`` and ``answer_sentence_log_likelihood``,
        routed like the passages' own questions."""
        rows: list[tuple[int, str, str, str]] = []  # (position, metric, prompt, scored text)
        for position, passage in enumerate(passages):
            for control in self.controls_of(passage):
                rows += [(position, "control_log_likelihood", prompt, q.answers[0])
                         for prompt, q in zip(self.question_prompts(control), control.questions)]
            title_line = f"{passage.title}\n" if passage.title else ""
            rows.append((position, "passage_log_likelihood", title_line, passage.context))
            rows += [(position, "answer_sentence_log_likelihood", title_line, text) for text in answer_sentences(passage)]
        likelihoods: list[float] = []
        # Passages are long: a bounded number of rows per forward pass bounds the logits' memory.
        for chunk in range(0, len(rows), self.PASSAGE_LEVEL_ROWS_PER_PASS):
            part = rows[chunk : chunk + self.PASSAGE_LEVEL_ROWS_PER_PASS]
            with route([position for position, *_ in part]):
                likelihoods += answer_log_likelihoods(model, self.tokenizer, [prompt for _, _, prompt, _ in part],
                                                      [text for *_, text in part], batch_size=len(part))
        by_metric: list[dict[str, list[float]]] = [{} for _ in passages]
        for (position, metric, _, _), ll in zip(rows, likelihoods):
            by_metric[position].setdefault(metric, []).append(ll)
        return [{metric: sum(values) / len(values) for metric, values in found.items()} for found in by_metric]

    def _score(
        self,
        passage: Passage,
        predictions: Sequence[str | None],
        log_likelihoods: Sequence[float],
        neutral: Sequence[float],
        passage_level: dict[str, float],
    ) -> Evaluation:
        items = []
        for q, prediction, ll, ll_neutral in zip(passage.questions, predictions, log_likelihoods, neutral):
            item: dict[str, Any] = {"question": q.question, "answers": list(q.answers)}
            if prediction is not None:  # None: answers were not generated (answer_generation=False)
                item.update(
                    prediction=prediction,
                    exact_match=exact_match(prediction, q.answers),
                    f1=token_f1(prediction, q.answers),
                    contains=contains_answer(prediction, q.answers),
                )
            item.update(log_likelihood=ll, answer_pmi=ll - ll_neutral)
            items.append(item)
        metrics = {name: sum(item[name] for item in items) / len(items) for name in REWARD_METRICS if name in items[0]}
        metrics.update(passage_level)
        if "control_log_likelihood" in passage_level:
            metrics["controlled_log_likelihood"] = metrics["log_likelihood"] - passage_level["control_log_likelihood"]
        return Evaluation(metrics[self.reward_metric], metrics, items)
