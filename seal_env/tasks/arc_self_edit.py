"""The few-shot ARC self-edit: the paper's JSON configuration, and its strict parser.

A self-edit is parsed leniently about where the JSON sits (prose, code fences) and strictly about
its content; it is only ever decoded as JSON, never executed.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from seal_env.env import SelfEditError

AUGMENTATION_FLAGS = (
    "use_basic_augmentations",
    "use_size_augmentations",
    "use_chain_augmentations",
    "use_repeat_augmentations",
)
"""The ``data_generation`` switches, in the order :func:`~seal_env.tasks.arc_tools.tools_for_config` takes them."""

STRATEGIES = {"train_using_all_tokens": "all", "train_using_output_tokens": "completion"}
"""``training.strategy`` values and the inner loop's ``loss_on`` they select."""

TRAINING_KEYS = ("strategy", "learning_rate", "num_train_epochs")


@dataclass(frozen=True)
class ArcSelfEdit:
    """A parsed self-edit: the paper's JSON configuration, values as written (not yet clamped)."""

    use_basic_augmentations: bool
    use_size_augmentations: bool
    use_chain_augmentations: bool
    use_repeat_augmentations: bool
    strategy: str
    learning_rate: float
    num_train_epochs: int

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The configuration in the paper's nested layout."""
        values = asdict(self)
        return {
            "data_generation": {flag: values[flag] for flag in AUGMENTATION_FLAGS},
            "training": {key: values[key] for key in TRAINING_KEYS},
        }

    def to_json(self) -> str:
        """The configuration as a self-edit string that :func:`parse_self_edit` accepts."""
        return json.dumps(self.to_dict(), indent=2)


class _StrictJSONError(ValueError):
    """Valid JSON syntax that a strict configuration parser refuses."""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    counts = Counter(key for key, _ in pairs)
    repeated = [key for key, n in counts.items() if n > 1]
    if repeated:
        raise _StrictJSONError(f"key {repeated[0]!r} appears {counts[repeated[0]]} times in one JSON object")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise _StrictJSONError(f"{name} is not a valid JSON number")


# Python's json accepts NaN/Infinity and silently keeps the last of duplicate keys; a strict
# parser must refuse both.
_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def find_json_object(text: str) -> dict[str, Any]:
    """The configuration object inside ``text``, wherever it sits (prose, code fences).

    Tries to decode a JSON object at every ``{`` and returns the first one with a
    ``data_generation`` or ``training`` key. Without one, raises
    :class:`~seal_env.env.SelfEditError` naming the most telling problem: a duplicate key or NaN,
    else invalid JSON at the first ``{`` (the configuration was meant to start there), else the
    first other object is returned so that its wrong keys get named. Only decodes JSON; never
    evaluates anything.
    """
    content_problem: str | None = None
    syntax_problem: str | None = None
    other_object: dict[str, Any] | None = None
    position = text.find("{")
    while position != -1:
        end = position + 1
        try:
            value, end = _DECODER.raw_decode(text, position)
        except _StrictJSONError as exc:
            content_problem = content_problem or str(exc)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, over-long integers, deep nesting
            if syntax_problem is None and other_object is None:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or "nested too deeply"
                syntax_problem = f"invalid JSON at character {position}: {reason}"
        else:
            if isinstance(value, dict) and ("data_generation" in value or "training" in value):
                return value
            if other_object is None and isinstance(value, dict):
                other_object = value
        position = text.find("{", end)
    if content_problem is not None:
        raise SelfEditError(f"invalid JSON configuration: {content_problem}")
    if syntax_problem is not None:
        raise SelfEditError(f"no usable JSON configuration: {syntax_problem}")
    if other_object is not None:
        return other_object
    raise SelfEditError("no JSON object found in the self-edit")


def _check_keys(obj: Any, expected: Sequence[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SelfEditError(f"{where} must be a JSON object, got {json.dumps(obj)[:60]}")
    unknown = [key for key in obj if key not in expected]
    missing = [key for key in expected if key not in obj]
    if unknown:
        raise SelfEditError(f"unknown key(s) in {where}: {', '.join(map(repr, unknown))}")
    if missing:
        raise SelfEditError(f"missing key(s) in {where}: {', '.join(map(repr, missing))}")
    return obj


def parse_self_edit(text: str) -> ArcSelfEdit:
    """Parse a self-edit: lenient about where the JSON sits, strict about its content.

    Raises :class:`~seal_env.env.SelfEditError` naming the problem for a missing object, unknown or
    missing keys, duplicate keys, and values of the wrong type (flags must be JSON booleans,
    ``strategy`` one of :data:`STRATEGIES`, ``learning_rate`` a finite number, ``num_train_epochs``
    an integer). Values are not range-checked here; the environment clamps them.
    """
    config = _check_keys(find_json_object(text), ("data_generation", "training"), "the configuration")
    flags = _check_keys(config["data_generation"], AUGMENTATION_FLAGS, "data_generation")
    for flag in AUGMENTATION_FLAGS:
        if not isinstance(flags[flag], bool):
            raise SelfEditError(f"data_generation.{flag} must be true or false, got {json.dumps(flags[flag])}")
    training = _check_keys(config["training"], TRAINING_KEYS, "training")
    strategy, learning_rate, epochs = (training[key] for key in TRAINING_KEYS)
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise SelfEditError(
            f"training.strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {json.dumps(strategy)[:60]}"
        )
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
        raise SelfEditError(f"training.learning_rate must be a number, got {json.dumps(learning_rate)}")
    try:
        learning_rate = float(learning_rate)
    except OverflowError:  # a JSON integer beyond float's range, e.g. 1e309 written out in digits
        learning_rate = math.inf
    if not math.isfinite(learning_rate):
        raise SelfEditError(f"training.learning_rate must be finite, got {json.dumps(training['learning_rate'])[:60]}")
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        raise SelfEditError(f"training.num_train_epochs must be an integer, got {json.dumps(epochs)}")
    return ArcSelfEdit(
        *(flags[flag] for flag in AUGMENTATION_FLAGS),
        strategy=strategy,
        learning_rate=learning_rate,
        num_train_epochs=epochs,
    )


EXAMPLE_SELF_EDIT = ArcSelfEdit(True, False, False, False, "train_using_output_tokens", 1e-3, 2)
"""The configuration shown in the observation prompt (and the benchmark's hand-written one)."""
