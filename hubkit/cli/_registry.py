"""The one registry of `hubkit` subcommands.

A command is declared once, where its code is: its name, help, its own arguments and the names of the shared
options it takes. `build_parser` (in `hubkit.cli`) turns the registry into argparse parsers; nothing else adds
commands or options.

    @command("tag", arg("repo"), arg("name"), arg("--force", action="store_true"),
             help="tag a revision", options=("hub", "repo-type", "offline"))
    def _tag(args) -> None:
        ...
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import hub


@dataclass(frozen=True)
class Arg:
    """One `ArgumentParser.add_argument` call kept as data: `arg("--to", default=None, metavar="DIR")`."""

    flags: tuple[str, ...]
    kwargs: dict = field(default_factory=dict)

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    def add_to(self, parser: argparse.ArgumentParser) -> argparse.Action:
        return parser.add_argument(*self.flags, **self.kwargs)


def arg(*flags: str, **kwargs) -> Arg:
    """An argument spec, with `add_argument`'s signature."""
    return Arg(flags, kwargs)


# Options several commands take, declared once; a command names the ones it takes (`options=("hub", "offline")`).
SHARED: dict[str, Arg] = {
    "hub": arg("--hub", default=None, help="local | hf | a folder (a local store there); default $HUBKIT_HUB or local"),
    "repo-type": arg("--repo-type", default="model", choices=hub.REPO_TYPES),
    # for commands whose REPO is optional (ls, gc): without one they cover every repo type
    "any-repo-type": arg(
        "--repo-type", default=None, choices=hub.REPO_TYPES, help="default: model with REPO, else all"
    ),
    "offline": arg("--offline", action="store_true", help="never contact the Hugging Face Hub (as HF_HUB_OFFLINE=1)"),
}


@dataclass(frozen=True)
class Command:
    """`hubkit NAME`: what `@command` records. A NAME of two words ("lora plan") is a subcommand of a `group`."""

    name: str
    run: Callable[[argparse.Namespace], int | None]
    help: str
    description: str | None = None
    args: tuple[Arg, ...] = ()
    options: tuple[str, ...] = ()

    def add_to(self, sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
        """Its parser: positionals, then the shared options, then its own options (the order `--help` shows)."""
        parser = sub.add_parser(self.name.split()[-1], help=self.help, description=self.description)
        for spec in self.args:
            if spec.positional:
                spec.add_to(parser)
        for name in self.options:
            SHARED[name].add_to(parser)
        for spec in self.args:
            if not spec.positional:
                spec.add_to(parser)
        parser.set_defaults(_command=self.name)
        return parser


COMMANDS: dict[str, Command] = {}  # in declaration order, which is the order `hubkit --help` lists them
GROUPS: dict[str, str] = {}  # "lora" -> its help line; its subcommands are the commands named "lora ..."


def group(name: str, *, help: str) -> None:
    """Declare `hubkit NAME SUBCOMMAND ...`: a word that only groups the commands named "NAME ..."."""
    if name in GROUPS or name in COMMANDS:
        raise ValueError(f"hubkit {name} is declared twice")
    GROUPS[name] = help


def command(
    name: str,
    *args: Arg,
    help: str,
    description: str | None = None,
    options: tuple[str, ...] = (),
) -> Callable[[Callable], Callable]:
    """Register the decorated function as `hubkit NAME`; it gets the parsed arguments and returns an exit code or None.

    `args` are its own arguments (`arg(...)`); `options` names the shared ones it takes, from `SHARED`.
    """
    unknown = [o for o in options if o not in SHARED]
    if unknown:
        raise ValueError(f"hubkit {name}: unknown shared option(s) {unknown}; known: {', '.join(SHARED)}")
    words = name.split()
    if len(words) not in (1, 2) or (len(words) == 2 and words[0] not in GROUPS):
        raise ValueError(f"hubkit {name}: a command is one word, or two after group({words[0]!r}, help=...)")
    if name in COMMANDS or name in GROUPS:
        raise ValueError(f"hubkit {name} is declared twice")

    def register(fn: Callable) -> Callable:
        COMMANDS[name] = Command(name, fn, help, description, tuple(args), tuple(options))
        return fn

    return register
