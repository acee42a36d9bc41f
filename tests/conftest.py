"""Shared fixtures: a tiny randomly initialised Llama model (fast) and the real default model (slow)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from seal_env.models import load_model, load_tokenizer
from seal_env.tasks.knowledge import Passage, Question

PASSAGES = [
    Passage("Velmora Bridge", "The Velmora Bridge was designed by Talia Norwin. It is painted ochre.",
            (Question("Who designed the Velmora Bridge?", ("Talia Norwin",)),
             Question("What colour is the Velmora Bridge?", ("ochre",)))),
    Passage("Quell Lake", "Quell Lake lies in the Tarn Valley and freezes every March.",
            (Question("Where is Quell Lake?", ("the Tarn Valley",)),)),
]
"""Two invented passages (each the other's control passage) for knowledge-env tests on the tiny model."""


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the test (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    tiny models gain nothing from more, and on a busy 2-core machine the threads fight."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def info_numbers(value) -> list:
    """Every int or float (numpy's too) inside a nested ``info`` value, bools aside."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in info_numbers(v)]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in info_numbers(v)]
    return [value] if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) else []


@pytest.fixture(scope="session")
def tokenizer():
    """The default model's tokenizer (a real BPE vocabulary with a chat template)."""
    return load_tokenizer(None)


def make_tiny_model(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with the default tokenizer's vocabulary: same code paths, ~100x faster."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer, tmp_path_factory):
    """The tiny test model as a checkpoint folder that ``--model`` loads (tests only read it)."""
    directory = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def tiny_lm(tokenizer):
    """``(model, tokenizer)`` of a fresh tiny model (function scope: tests may not share state)."""
    return make_tiny_model(tokenizer), tokenizer


@pytest.fixture(scope="session")
def default_lm():
    """The real embedded default model (SmolLM2-135M-Instruct); for the few end-to-end tests."""
    return load_model(None, device="cpu")


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer, to prove weights are bit-identical."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
