"""Every command has a description, and every flag says what it does and, when it has one,
its default."""

from __future__ import annotations

import argparse

import pytest
from pvrs.cli import build_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_command_and_flag_has_help(name: str) -> None:
    parser = _commands()[name]
    assert parser.description, f"pvrs {name} has no description"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"pvrs {name} {flag} has no help"
        has_default = action.default not in (None, False, argparse.SUPPRESS)
        if has_default and action.option_strings:
            assert "default" in action.help, f"pvrs {name} {flag}: help does not say the default"
