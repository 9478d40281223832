"""Issue 16, defect 8: every argument of the three programs says what it is (``--help``)."""

from __future__ import annotations

import argparse

import pytest

from gridwatt.agent.cli import _parser as agent_parser
from gridwatt.cli import _parser as cli_parser
from gridwatt.collector.cli import _parser as collector_parser


def _undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _undocumented(sub, f"{path} {name}")
            documented = {a.dest for a in action._choices_actions if a.help}
            missing += [f"{path} {name} (command)" for name in action.choices if name not in documented]
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction) and not action.help:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


@pytest.mark.parametrize("name,parser", [("gridwatt", cli_parser), ("gridwatt-agent", agent_parser),
                                         ("gridwatt-collector", collector_parser)])
def test_every_argument_has_help(name: str, parser: object) -> None:
    assert _undocumented(parser(), name) == []  # type: ignore[operator]
