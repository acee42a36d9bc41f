"""Configs are the command line: dataclass fields as argparse options, help from their docstrings.

As in TRL's ``HfArgumentParser``, but for this project's style of a docstring under each field (and
TRL's ``metadata["help"]``). An option that is not given is absent from the parsed namespace, so
that only the given ones are passed to the dataclass and the defaults live in one place. A nested ``inner_loop`` field
(:class:`~seal_env.inner_loop.InnerLoopConfig`) is flattened into ``--inner-*`` options, and a field
of another type names its parser in ``field(metadata={"parse": fn})``.
Used by ``seal-env demo``, ``seal-env train`` (``agents.cli``) and the benchmark scripts.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import textwrap
import types
import typing
from dataclasses import MISSING, Field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

INNER_PREFIX = "inner_"


def field_docs(cls: type) -> dict[str, str]:
    """Help text of each field of a dataclass: ``metadata["help"]`` (TRL's style) or the docstring
    written under the field (this project's style), subclasses overriding their bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not is_dataclass(klass):
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError):  # source not available (e.g. built in a REPL)
            body = []
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    for f in fields(cls):
        if "help" in f.metadata:
            docs[f.name] = f.metadata["help"]
    return docs


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _argument_type(annotation: Any) -> tuple[type, list[Any] | None]:
    """``(type, choices)`` for a field annotation: Literal -> choices; ``X | None`` and
    ``str | list[str]`` -> the first scalar type."""
    if typing.get_origin(annotation) is Literal:
        choices = list(typing.get_args(annotation))
        return type(choices[0]), choices
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        scalars = [a for a in typing.get_args(annotation) if a in (bool, int, float, str, Path)]
        if scalars:
            return scalars[0], None
    if annotation in (bool, int, float, str, Path):
        return annotation, None
    raise TypeError(f"no command-line type for annotation {annotation!r}")


class Option(typing.NamedTuple):
    dest: str
    type: type
    choices: list[Any] | None
    default: Any
    help: str
    nested: bool
    """True for a field of the nested InnerLoopConfig."""


def dataclass_options(cls: type, defaults: Any = None, *, nested: bool = False) -> list[Option]:
    """One :class:`Option` per field of ``cls`` (defaults from the instance ``defaults`` when given).
    The nested ``inner_loop`` dataclass is flattened into ``inner_*`` options with the parent's
    default values."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    options = []
    for f in fields(cls):
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        if f.name == "inner_loop" and is_dataclass(hints[f.name]):
            options.extend(
                o._replace(dest=INNER_PREFIX + o.dest) for o in dataclass_options(hints[f.name], default, nested=True)
            )
            continue
        # A field whose type argparse cannot build names its own parser: field(metadata={"parse": fn}).
        kind, choices = (f.metadata["parse"], None) if "parse" in f.metadata else _argument_type(hints[f.name])
        options.append(Option(f.name, kind, choices, default, docs.get(f.name, ""), nested))
    return options


def add_option(group: argparse._ArgumentGroup, option: Option, help_text: str | None = None) -> None:
    """Add ``option`` as ``--dest-with-dashes`` (absent unless given; booleans as ``--x/--no-x``),
    with ``help_text`` (default: the field's docstring)."""
    help_text = option.help if help_text is None else help_text
    flag = "--" + option.dest.replace("_", "-")
    help_text = help_text.replace("%", "%%")  # argparse formats help with %
    if option.type is bool:
        group.add_argument(flag, dest=option.dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
    else:
        group.add_argument(
            flag, dest=option.dest, type=option.type, choices=option.choices, default=argparse.SUPPRESS, help=help_text
        )


def json_object(text: str, name: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object (keyword arguments given on the command line, e.g.
    ``--env-kwargs``); ValueError naming ``name`` for invalid JSON or another JSON value."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object")
    return value


def comma_list(kind: type = str):
    """A ``parse`` for a list field given as comma-separated values: ``field(metadata={"parse": comma_list(float)})``."""

    def parse(text: str) -> list:
        return [kind(value.strip()) for value in text.split(",") if value.strip()]

    parse.__name__ = f"comma-separated {kind.__name__}s"  # argparse names the type in its errors
    return parse


def given_options(args: argparse.Namespace, options: list[Option]) -> dict[str, Any]:
    """The values of the options that were given on the command line, by field name."""
    return {o.dest: getattr(args, o.dest) for o in options if getattr(args, o.dest, None) is not None}


def parse_config(cls: type, argv: Sequence[str] | None, description: str, *, required: Sequence[str] = ()) -> Any:
    """``cls`` built from the command line ``argv``: one option per field (help from its docstring,
    default shown), only the given ones passed on; the fields in ``required`` must be given."""
    parser = argparse.ArgumentParser(description=description)
    options = dataclass_options(cls)
    group = parser.add_argument_group("settings")
    for option in options:
        add_option(group, option, f"{option.help} (default: {option.default})")
    values = given_options(parser.parse_args(argv), options)
    missing = ["--" + name.replace("_", "-") for name in required if name not in values]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    return cls(**values)
