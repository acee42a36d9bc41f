"""seal-env: SEAL-style self-adaptation of language models as Gymnasium environments.

Importing the package registers the environments::

    import gymnasium as gym
    import seal_env

    env = gym.make("seal_env/KnowledgeIncorporation-v0")
"""

from gymnasium.envs.registration import register

from seal_env.env import Evaluation, SelfAdaptEnv, SelfEditError, TrainingPlan, UnicodeText
from seal_env.inner_loop import InnerLoopConfig, TrainResult, adapted
from seal_env.lm import TrainingExample
from seal_env.models import load_model
from seal_env.tasks.knowledge import KnowledgeIncorporationEnv, Passage, Question, load_passages

__version__ = "0.1.0"

register(
    id="seal_env/KnowledgeIncorporation-v0",
    entry_point="seal_env.tasks.knowledge:KnowledgeIncorporationEnv",
    vector_entry_point="seal_env.vector:knowledge_incorporation",
)
register(
    id="seal_env/FewShotARC-v0",
    entry_point="seal_env.tasks.arc:FewShotARCEnv",
    vector_entry_point="seal_env.vector:few_shot_arc",
)

__all__ = [
    "Evaluation",
    "InnerLoopConfig",
    "KnowledgeIncorporationEnv",
    "Passage",
    "Question",
    "SelfAdaptEnv",
    "SelfEditError",
    "TrainResult",
    "TrainingExample",
    "TrainingPlan",
    "UnicodeText",
    "adapted",
    "load_model",
    "load_passages",
]
