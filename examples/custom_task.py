"""A new task by subclassing SelfAdaptEnv: teach the model a small glossary of invented terms.

The context is a glossary; the self-edit is text using the terms (one sentence per line); the model is
scored by the log-likelihood of each definition given the question "What does <term> mean?". Four
methods define the task: render_prompt, render_context, self_edit_to_examples and evaluate.

Run: python examples/custom_task.py   (CPU, ~30 s with the embedded default model)
"""

from __future__ import annotations

import gymnasium as gym
import torch

import seal_env  # noqa: F401
from seal_env import Evaluation, InnerLoopConfig, SelfAdaptEnv, SelfEditError, TrainingExample
from seal_env.lm import chat_prompt
from seal_env.scoring import answer_log_likelihoods

GLOSSARIES = [
    {"brindle-lock": "a knot used by Orvan river pilots", "quessary": "a tax paid in salt", "tamblewood": "pale timber from the Osk hills"},
    {"vellicant": "a lamp that burns seal oil", "drumhollow": "a village meeting hall", "pell-tide": "the second high tide of spring"},
]


class GlossaryEnv(SelfAdaptEnv[dict]):
    """Learn invented terms from self-written example sentences."""

    def render_prompt(self, glossary: dict) -> str:
        terms = "\n".join(f"- {term}: {meaning}" for term, meaning in glossary.items())
        return f"Write one sentence per line that uses each of these terms correctly:\n{terms}\n\nSentences:\n"

    def render_context(self, glossary: dict) -> str:
        return "\n".join(f"{term}: {meaning}" for term, meaning in glossary.items())

    def self_edit_to_examples(self, self_edit: str, glossary: dict) -> list[TrainingExample]:
        lines = [line.strip() for line in self_edit.splitlines() if line.strip()]
        if not any(term in line for line in lines for term in glossary):
            raise SelfEditError("self-edit uses none of the glossary's terms")
        return [TrainingExample(line) for line in lines]

    def evaluate(self, model: torch.nn.Module, glossary: dict) -> Evaluation:
        prompts = [chat_prompt(self.tokenizer, f"What does {term} mean?") for term in glossary]
        scores = answer_log_likelihoods(model, self.tokenizer, prompts, list(glossary.values()))
        items = [{"term": t, "log_likelihood": s} for t, s in zip(glossary, scores)]
        mean = sum(scores) / len(scores)
        return Evaluation(score=mean, metrics={"log_likelihood": mean}, items=items)


gym.register(id="examples/Glossary-v0", entry_point=GlossaryEnv, kwargs={"contexts": GLOSSARIES})

if __name__ == "__main__":
    env = gym.make("examples/Glossary-v0", inner_loop=InnerLoopConfig(epochs=3))
    obs, info = env.reset(seed=0, options={"index": 0})
    self_edit = (
        "A brindle-lock is a knot used by Orvan river pilots.\n"
        "A quessary is a tax paid in salt.\n"
        "Tamblewood is pale timber from the Osk hills."
    )
    _, reward, _, _, info = env.step(self_edit)
    print(f"reward {reward}: log-likelihood {info['score']:.3f} after vs {info['baseline_score']:.3f} before")
    _, reward, _, _, info = env.step("Nothing relevant here.")
    print(f"an off-task self-edit: reward {reward}, error: {info['error']}")
