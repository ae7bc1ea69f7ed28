"""Every option of every seqserve command says what it does and what it defaults to, and
`seqserve` alone lists the commands."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from seqserve import cli
from seqserve.bench.cli import build_parser as bench_parser
from seqserve.models.cli import build_parser as models_parser


def commands() -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {"bench": bench_parser()}
    for parser in (cli.build_parser(), models_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if sub._actions:  # the delegated commands are listed, not parsed here
                        found.setdefault(name, sub)
    return found


def test_every_command_is_covered() -> None:
    assert set(commands()) == {"serve", "models", "predict", "train", "export", "compare", "bench"}


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_option_has_help_with_its_default(name: str) -> None:
    parser = commands()[name]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        flag = "/".join(action.option_strings) or action.dest
        text = formatter._expand_help(action) if action.help else ""  # as --help prints it
        assert text.strip(), f"seqserve {name} {flag}: no help"
        if action.required or not action.option_strings:
            continue  # required or positional: nothing to default
        assert re.search(r"default|\[[^\]]+\]", text), f"seqserve {name} {flag}: {text!r}"


def test_seqserve_alone_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    for name in ("serve", "models", "predict", "train", "export", "compare", "bench"):
        assert re.search(rf"^\s+{name}\s", err, re.M), name


def test_install_hints_fit_a_clone_and_an_installed_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from seqserve import hints

    assert hints.install("plot").startswith("pip install -e '.[plot]'")  # this clone
    monkeypatch.setattr(hints, "_SOURCE_ROOT", tmp_path)  # site-packages: no pyproject.toml
    assert hints.install("plot") == "pip install 'seqserve[plot]'"
