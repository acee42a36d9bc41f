"""Language-model plumbing shared by the inner loop, the scorers and the agents.

* :class:`TrainingExample` and :func:`tokenize_example` – the unit of training data a self-edit
  becomes, and how it is turned into token ids with a loss mask.
* :func:`pad_batch` and :func:`pack_batch` – a batch as padded rows, or as one row of sequences
  packed end to end (no padding; multi_lora's training passes).
* :func:`token_log_probs` – log-probabilities of the tokens that carry loss. It runs the decoder
  once and applies the output layer only at those positions: on a 49k-token vocabulary the full
  ``[batch, length, vocab]`` logits tensor would cost more than the rest of the step on CPU
  (Transformers' ``logits_to_keep`` takes one index set for the whole batch, not one per row).
* :func:`chat_prompt` and :func:`generate` – batched generation for instruction-tuned models.
"""

from __future__ import annotations

from dataclasses import dataclass
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class TrainingExample:
    """One training sequence: ``prompt`` followed by ``completion``.

    With ``loss_on="all"`` every token carries loss; with ``"completion"`` only the completion's
    (the prompt is context, as in instruction tuning). Plain text continuation uses an empty prompt.
    """

    completion: str
    prompt: str = ""


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    loss_mask: list[bool]  # True where the token is a training target
    truncated: bool


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase,
    example: TrainingExample,
    *,
    max_tokens: int,
    loss_on: str = "all",
    add_eos: bool = True,
) -> TokenizedExample:
    """Token ids and loss mask for one example, at most ``max_tokens`` long.

    The completion is plain text: special-token strings in it (``<|im_start|>``, ``<|endoftext|>``)
    become ordinary tokens, so a self-edit cannot train the model on control tokens; the prompt may
    hold chat-template markup, and the eos that ``add_eos`` appends is the real special id.
    Too-long examples lose the start of their prompt first (the completion is what is learnt), then
    the end of the completion.
    """
    if loss_on not in ("all", "completion"):
        raise ValueError(f"loss_on must be 'all' or 'completion', got {loss_on!r}")
    prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"] if example.prompt else []
    completion_ids = tokenizer(example.completion, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    truncated = len(prompt_ids) + len(completion_ids) > max_tokens
    if truncated:
        completion_ids = completion_ids[:max_tokens]
        keep = max_tokens - len(completion_ids)
        prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep > 0 else []
    ids = prompt_ids + completion_ids
    mask = [loss_on == "all"] * len(prompt_ids) + [True] * len(completion_ids)
    return TokenizedExample(ids, mask, truncated)


def pad_batch(
    examples: Sequence[TokenizedExample], pad_token_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example of the batch: ``(input_ids, attention_mask, loss_mask)``."""
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(examples), length), dtype=torch.long)
    loss_mask = torch.zeros((len(examples), length), dtype=torch.bool)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        attention[row, :n] = 1
        loss_mask[row, :n] = torch.tensor(example.loss_mask)
    return ids.to(device), attention.to(device), loss_mask.to(device)


def pack_batch(examples: Sequence[TokenizedExample], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate the examples into one row, without padding: ``(input_ids, position_ids, loss_mask)``.

    Positions restart at 0 with every example; run the model with these ``position_ids`` and no
    attention mask and Transformers keeps the examples apart (a block-diagonal causal mask, as for
    TRL's padding-free training). The first token of each example carries no loss: it would be
    "predicted" from the end of the previous example.
    """
    ids = torch.tensor([t for e in examples for t in e.input_ids])
    positions = torch.cat([torch.arange(len(e.input_ids)) for e in examples])
    loss_mask = torch.tensor([i > 0 and m for e in examples for i, m in enumerate(e.loss_mask)])
    return ids[None].to(device), positions[None].to(device), loss_mask[None].to(device)


def _decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The transformer body and output layer of a causal LM (unwrapping PEFT), or None when the
    model does not expose them or post-processes logits (soft-capping), where only a full forward
    is correct."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "final_logit_softcapping", None):
        return None
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if get_decoder else None
    head = base.get_output_embeddings()
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


def token_log_probs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    loss_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every target token, and the batch row it belongs to.

    ``loss_mask[b, t]`` marks token ``t`` of row ``b`` as a target, predicted from position ``t-1``
    (the first token of a row has no prediction and is ignored). Takes a padded batch
    (:func:`pad_batch`) or a packed one (:func:`pack_batch`: ``position_ids`` and no attention
    mask). Returns two 1-D tensors of equal length: log-probs (float32) and row indices.
    """
    predicted = loss_mask[:, 1:]
    if attention_mask is not None:
        predicted = predicted & attention_mask[:, 1:].bool()
    targets = input_ids[:, 1:][predicted]
    rows = predicted.nonzero()[:, 0]
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    parts = _decoder_and_head(model)
    if parts is None:
        logits = model(**inputs).logits[:, :-1][predicted]
    else:
        decoder, head = parts
        hidden = decoder(**inputs).last_hidden_state
        logits = head(hidden[:, :-1][predicted])
    return -F.cross_entropy(logits.float(), targets, reduction="none"), rows


def chat_prompt(tokenizer: PreTrainedTokenizerBase, user_text: str, system: str | None = None) -> str:
    """``user_text`` in the tokenizer's chat template, ready for the assistant's reply; the plain
    text for models without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return user_text
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    batch_size: int = 16,
    max_prompt_tokens: int | None = None,
    progress: bool = False,
) -> list[list[str]]:
    """Continue each already-formatted prompt; ``temperature == 0`` is greedy decoding.

    Returns one list of ``num_return_sequences`` completions per prompt, special tokens removed.
    Prompts are left-padded in batches of ``batch_size`` prompts. Seed sampling with
    ``torch.manual_seed`` (or ``torch.random.fork_rng``) for reproducibility.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    # Left padding keeps every prompt's end next to its continuation; left truncation keeps it too.
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    sampling = temperature > 0
    options = dict(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        num_return_sequences=num_return_sequences,
        pad_token_id=tokenizer.pad_token_id,
    )
    if sampling:
        options.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        options.update(temperature=None, top_p=None, top_k=None)
    outputs: list[list[str]] = []
    try:
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="generating", disable=not progress, leave=False):
            batch = list(prompts[start : start + batch_size])
            encoded = tokenizer(
                batch,
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
                truncation=max_prompt_tokens is not None,
                max_length=max_prompt_tokens,
            ).to(model.device)
            tokens = model.generate(**encoded, **options)
            texts = tokenizer.batch_decode(tokens[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
            outputs.extend(texts[i : i + num_return_sequences] for i in range(0, len(texts), num_return_sequences))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
        model.train(was_training)
    return outputs


@contextmanager
def seeded_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Inside the block torch's global RNG (and ``device``'s, on CUDA) is seeded with ``seed`` (left
    as it is for ``None``); on exit the caller's random state is restored either way. For draws that
    PEFT, modules and ``generate`` make from the global RNG (LoRA initialisation, dropout, sampling),
    which take no generator argument."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def sample_self_edits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    observation_prompts: Sequence[str],
    *,
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 0.95,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    seed: int | None = None,
    progress: bool = False,
) -> list[list[str]]:
    """``n`` self-edits per observation prompt (``obs["prompt"]``), written by ``model`` as a chat reply.

    ``seed`` makes sampling reproducible without touching the caller's random state.
    """
    prompts = [chat_prompt(tokenizer, p) for p in observation_prompts]
    with seeded_rng(seed, next(model.parameters()).device):
        return generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            num_return_sequences=n,
            batch_size=batch_size,
            progress=progress,
        )
