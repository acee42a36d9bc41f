"""Scorers: SQuAD exact match and token F1, answer containment, and answer log-likelihood.

The text metrics follow the official SQuAD v1.1 evaluation script (lower-case, strip punctuation and
the articles a/an/the, collapse whitespace); the best score over the gold answers counts.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from seal_env.lm import TrainingExample, pad_batch, token_log_probs, tokenize_example

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _as_list(golds: str | Sequence[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _as_list(golds)))


def _f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: str | Sequence[str]) -> float:
    """SQuAD token-overlap F1 against the best-matching gold answer."""
    return max(_f1(prediction, g) for g in _as_list(golds))


def contains_answer(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 if a normalised gold answer occurs as a whole-word span of the normalised prediction.

    Small instruction-tuned models answer in sentences ("The bridge was designed by Talia Norwin."),
    which exact match scores as wrong although the fact is there.
    """
    pred = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(g) and f" {normalize_answer(g)} " in pred for g in _as_list(golds)))


@torch.no_grad()
def answer_log_likelihoods(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int = 16,
    max_tokens: int = 1024,
) -> list[float]:
    """Mean log-probability per token of each ``answer`` as the continuation of its ``prompt``."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        batch = [
            tokenize_example(
                tokenizer, TrainingExample(prompt=p, completion=a), max_tokens=max_tokens, loss_on="completion", add_eos=False
            )
            for p, a in zip(prompts[start : start + batch_size], answers[start : start + batch_size])
        ]
        log_probs, rows = token_log_probs(model, *pad_batch(batch, pad_id, device))
        sums = torch.zeros(len(batch), device=log_probs.device).index_add_(0, rows, log_probs)
        counts = torch.bincount(rows, minlength=len(batch)).clamp(min=1)
        scores.extend((sums / counts).tolist())
    return scores
