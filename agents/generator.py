"""A self-edit generator: a Hugging Face causal LM, with a LoRA adapter by default, as an agent's policy.

:class:`GeneratorAgent` implements the parts of :class:`agents.base.Agent` that every LM-based agent
shares: sampling self-edits (:func:`seal_env.lm.sample_self_edits`, the observation's prompt in the
model's chat template), saving and loading the policy, and copying it into the environment's inner
model. Subclasses write ``learn`` (ReST-EM) or ``train_round`` (GRPO).

The saved policy is what PEFT's ``save_pretrained`` writes (``adapter_config.json`` +
``adapter_model.safetensors``), so any script can load it with
``peft.PeftModel.from_pretrained(base_model, path)``; with ``full_finetune`` it is a whole
checkpoint (``model.safetensors`` + config + tokenizer) for ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase, ProgressCallback, Trainer

from agents.base import Agent
from seal_env.lm import sample_self_edits, seeded_rng

ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class GeneratorConfig:
    """How the generator is trained and how it samples self-edits (shared by the LM-based agents)."""

    learning_rate: float = 1e-4
    """Learning rate of the generator's updates."""
    lora_rank: int = 16
    """LoRA rank of the generator's adapter."""
    lora_alpha: float = 32.0
    """LoRA alpha of the generator's adapter (the update is scaled by alpha / rank)."""
    lora_target_modules: str = "all-linear"
    """Modules that get the generator's adapter: PEFT's 'all-linear' or a regular expression."""
    full_finetune: bool = False
    """Train every weight of the generator instead of a LoRA adapter (needs a second full model copy)."""
    temperature: float = 1.0
    """Sampling temperature of self-edits."""
    top_p: float = 0.95
    """Nucleus-sampling threshold of self-edits."""
    max_new_tokens: int = 128
    """Longest self-edit in tokens."""
    generation_batch_size: int = 16
    """Sequences generated together when sampling self-edits."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (saves memory on large models, costs time)."""

    def __post_init__(self) -> None:
        problems = []
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lora_rank < 1:
            problems.append(f"lora_rank must be >= 1, got {self.lora_rank}")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0 (self-edits are sampled), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.generation_batch_size < 1:
            problems.append(f"generation_batch_size must be >= 1, got {self.generation_batch_size}")
        if problems:
            raise ValueError(f"invalid {type(self).__name__}: " + "; ".join(problems))


def trainer_args(model: torch.nn.Module, config: GeneratorConfig, *, seed: int) -> dict[str, Any]:
    """The settings every TRL trainer of a generator shares: the config's constant learning rate and
    activation checkpointing, the round's seed, a log line per step and nothing saved or reported
    (the runner checkpoints and logs), and the device-dependent ones. TRL turns bf16 on by default,
    which on CPU would run a float32 model under bfloat16 autocast: it is used only on CUDA devices
    that support it. Pinned memory only helps (and only works without a warning) with CUDA.
    ``use_cpu`` lets several CPU processes (``accelerate launch``/``torchrun``) train together over gloo."""
    cuda = next(model.parameters()).device.type == "cuda"
    return {
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": "constant",
        "activation_checkpointing": config.gradient_checkpointing,  # the new name of gradient_checkpointing
        "seed": seed,
        "data_seed": seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "fp16": False,
        "dataloader_pin_memory": cuda,
        "use_cpu": not cuda,
    }


class _QuietProgress(ProgressCallback):
    """The Trainer's progress bar without its per-step printouts of the log dict."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def quiet_progress(trainer: Trainer) -> None:
    """Keep a Trainer's tqdm bar but drop its per-step dict printouts (the runner prints a table)."""
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_QuietProgress)


class GeneratorAgent(Agent):
    """An agent whose policy is a causal language model (``model`` is changed in place: pass a
    private copy, e.g. ``seal_env.models.load_model(name, shared=False)``). ``seed`` seeds the
    initialisation of its LoRA adapter, so that two agents built alike are equal whatever the
    global random state (which is left as it was)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: GeneratorConfig, *, seed: int = 0):
        if isinstance(model, PeftModel):
            raise TypeError("pass a plain model; the agent attaches its own LoRA adapter")
        self.config = config
        self.tokenizer = tokenizer
        if config.full_finetune:
            self.model: PreTrainedModel | PeftModel = model
        else:
            lora = LoraConfig(
                r=config.lora_rank,
                lora_alpha=config.lora_alpha,
                target_modules=config.lora_target_modules,
                lora_dropout=0.0,
                bias="none",
                task_type="CAUSAL_LM",
            )
            with seeded_rng(seed, next(model.parameters()).device):
                self.model = get_peft_model(model, lora)
        self.model.eval()

    def propose(self, observations: Sequence[dict[str, Any]], n: int, *, seed: int) -> list[list[str]]:
        return sample_self_edits(
            self.model,
            self.tokenizer,
            [obs["prompt"] for obs in observations],
            n=n,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            max_new_tokens=self.config.max_new_tokens,
            batch_size=self.config.generation_batch_size,
            seed=seed,
            progress=True,
        )

    def save(self, directory: Path) -> None:
        self.model.save_pretrained(directory)
        if self.config.full_finetune:
            self.tokenizer.save_pretrained(directory)

    def load(self, directory: Path) -> None:
        directory = Path(directory)
        if self.config.full_finetune:
            device, dtype = self.model.device, self.model.dtype
            loaded = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True)
            self.model.load_state_dict(loaded.to(device).state_dict())
        else:
            weights = directory / ADAPTER_WEIGHTS
            if not weights.is_file():
                raise FileNotFoundError(f"{weights}: no adapter to load")
            result = set_peft_model_state_dict(self.model, load_file(weights, device=str(self.model.device)))
            if result.unexpected_keys:
                raise ValueError(f"{weights} does not fit this generator: unexpected {result.unexpected_keys[:3]}")

    @torch.no_grad()
    def sync_inner_model(self, model: torch.nn.Module) -> None:
        """Make ``model`` (a separate copy of the generator's base model) equal to the generator with
        its adapter merged. Only adapted layers are written: LoRA training changes nothing else."""
        if self.config.full_finetune:
            model.load_state_dict(self.model.state_dict())
            return
        base = self.model.get_base_model()
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                merged = module.get_base_layer().weight + module.get_delta_weight("default")
                model.get_submodule(name).weight.copy_(merged)
