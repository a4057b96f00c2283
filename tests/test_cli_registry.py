"""The one registry of `hubkit` commands: every command is listed, and shared options are declared once."""

from __future__ import annotations

import argparse
import re
from importlib.metadata import entry_points

import pytest
from conftest import run_cli

from hubkit import cli

FLAT = " ".join  # argparse wraps help to the terminal and each parser's column width; compare words, not layout


def help_text(capsys, *words: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([*words, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def parser_of(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    for word in name.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def option_help(text: str, flag: str) -> str:
    """The entry for `flag` in a `--help` text (its line and continuation lines), whitespace-normalised."""
    entries = re.split(r"\n(?=  -)", text.split("options:", 1)[1])
    (entry,) = [e for e in entries if re.match(rf"\s*{re.escape(flag)}\b", e)]
    return FLAT(entry.split())


def test_every_registered_command_is_listed_in_help(capsys):
    top = FLAT(run_cli("--help", check=True).stdout.split())  # through `python -m hubkit`
    assert top == FLAT(help_text(capsys).split())
    for name, command in cli.COMMANDS.items():
        head, _, rest = name.partition(" ")
        if rest:  # a group's subcommand: the group in `hubkit --help`, the subcommand in `hubkit GROUP --help`
            assert f" {head} {cli.GROUPS[head]} " in top, name
            assert f" {rest} {command.help} " in FLAT(help_text(capsys, head).split()), name
        else:
            assert f" {name} {command.help} " in top, name
    assert set(cli.GROUPS) <= {name.partition(" ")[0] for name in cli.COMMANDS}  # no empty group


def test_the_console_script_is_main():
    (script,) = entry_points(group="console_scripts", name="hubkit")
    assert script.load() is cli.main


@pytest.mark.parametrize("option", sorted(cli.SHARED))
def test_shared_options_are_one_spec_for_every_command(option, capsys):
    spec = cli.SHARED[option]
    takers = [name for name, command in cli.COMMANDS.items() if option in command.options]
    assert takers, f"no command takes the shared option {option!r}"
    reference = spec.add_to(argparse.ArgumentParser(add_help=False))
    fields = ("option_strings", "dest", "default", "choices", "help", "nargs", "const", "required", "type")
    helps = set()
    for name in takers:
        (action,) = [a for a in parser_of(name)._actions if a.option_strings == reference.option_strings]
        assert {f: getattr(action, f) for f in fields} == {f: getattr(reference, f) for f in fields}, name
        helps.add(option_help(help_text(capsys, *name.split()), spec.flags[0]))
    assert len(helps) == 1, helps  # e.g. `hubkit push --help` and `hubkit pull --help` say the same about --hub


def test_no_command_declares_a_shared_option_itself():
    shared_flags = {flag for spec in cli.SHARED.values() for flag in spec.flags}
    for name, command in cli.COMMANDS.items():
        own = {flag for spec in command.args for flag in spec.flags}
        assert not own & shared_flags, f"hubkit {name} declares {own & shared_flags}; take them by name in options="


def test_push_and_pull_show_the_same_store_options(capsys):
    push, pull = help_text(capsys, "push"), help_text(capsys, "pull")
    for flag in ("--hub", "--repo-type", "--offline"):
        assert option_help(push, flag) == option_help(pull, flag)
    assert "default $HUBKIT_HUB or local" in option_help(push, "--hub")


def test_declaration_mistakes_are_refused_at_import():
    before = dict(cli.COMMANDS)
    with pytest.raises(ValueError, match="unknown shared option"):
        cli.command("x", help="x", options=("hubb",))
    with pytest.raises(ValueError, match="group"):
        cli.command("nogroup sub", help="x")
    with pytest.raises(ValueError, match="declared twice"):
        cli.command("push", help="x")
    assert before == cli.COMMANDS
