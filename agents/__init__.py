"""Interchangeable learners of self-edits; each sees environments only through the Gymnasium API.

* :mod:`agents.base` – the protocol (:class:`Agent`, :class:`StepRecord`, :class:`Round`).
* :mod:`agents.generator` – :class:`GeneratorAgent`, a Hugging Face LM (LoRA by default) as the policy.
* :mod:`agents.rest_em` – ReST-EM: keep rewarded self-edits, fine-tune with TRL's ``SFTTrainer``.
* :mod:`agents.grpo` – GRPO with TRL's ``GRPOTrainer``, the environment as the reward function.
* :mod:`agents.runner` – :func:`train`: rounds, held-out evaluation, logs, plot, TensorBoard, resume.
* :mod:`agents.cli` – the options and job of ``seal-env train``.

(The name ``agents`` is also used by an unrelated PyPI distribution; do not install both in one
environment.)
"""

from agents.base import Agent, Round, StepRecord, StepRequest
from agents.generator import GeneratorAgent, GeneratorConfig
from agents.grpo import GRPOAgent, GRPOAgentConfig
from agents.rest_em import RestEMAgent, RestEMConfig
from agents.runner import TrainConfig, train

__all__ = [
    "Agent",
    "GRPOAgent",
    "GRPOAgentConfig",
    "GeneratorAgent",
    "GeneratorConfig",
    "RestEMAgent",
    "RestEMConfig",
    "Round",
    "StepRecord",
    "StepRequest",
    "TrainConfig",
    "train",
]
