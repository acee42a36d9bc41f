"""Configs are the command line (seal_env.config_cli): one mechanism for demo, train and benchmarks."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from seal_env.cli import build_parser, inner_loop_from_args
from seal_env.config_cli import add_option, comma_list, dataclass_options, given_options
from seal_env.inner_loop import InnerLoopConfig


@dataclass
class Example:
    path: Path | None = None
    """Where to read from."""
    mode: Literal["a", "b"] = "a"
    """Which mode."""
    verbose: bool = False
    """Talk more."""


def test_fields_become_options_with_their_docstrings_and_only_given_ones_are_passed():
    options = dataclass_options(Example)
    assert [(o.dest, o.type, o.choices, o.default, o.help) for o in options] == [
        ("path", Path, None, None, "Where to read from."),
        ("mode", str, ["a", "b"], "a", "Which mode."),
        ("verbose", bool, None, False, "Talk more."),
    ]
    parser = argparse.ArgumentParser()
    group = parser.add_argument_group("example")
    for option in options:
        add_option(group, option)
    assert given_options(parser.parse_args([]), options) == {}
    values = given_options(parser.parse_args(["--path", "x.json", "--no-verbose"]), options)
    assert values == {"path": Path("x.json"), "verbose": False}
    assert Example(**values) == Example(path=Path("x.json"))
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])


def test_demo_inner_loop_options_cover_every_field_and_keep_the_presets(capsys):
    fields = {o.dest for o in dataclass_options(InnerLoopConfig)}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    demo_help = capsys.readouterr().out
    assert all("--inner-" + name.replace("_", "-") in demo_help for name in fields)
    args = build_parser().parse_args(["demo", "--inner-rank", "4", "--inner-loss-on", "completion"])
    assert inner_loop_from_args(args) == InnerLoopConfig(rank=4, loss_on="completion")
    seal = build_parser().parse_args(["demo", "--inner-preset", "seal", "--inner-epochs", "2"])
    assert inner_loop_from_args(seal) == InnerLoopConfig.seal(epochs=2)


def test_comma_separated_lists():
    assert comma_list(float)("1e-3, 2e-3,") == [1e-3, 2e-3]
    assert comma_list()("a,b") == ["a", "b"]
    with pytest.raises(ValueError):
        comma_list(int)("1,two")
