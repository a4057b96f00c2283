"""The `hubkit` command. Exit code 0 on success, 1 with a one-line reason on stderr on failure."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable

from . import hub
from .errors import HubkitError

COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


def _store_args(p: argparse.ArgumentParser, *, repo_type: bool = True, hub_flag: bool = True) -> None:
    if hub_flag:
        p.add_argument(
            "--hub", default=None, help="local | hf | a folder (a local store there); default $HUBKIT_HUB or local"
        )
    if repo_type:
        p.add_argument("--repo-type", default="model", choices=hub.REPO_TYPES)
    p.add_argument("--offline", action="store_true", help="never contact the Hugging Face Hub (as HF_HUB_OFFLINE=1)")


@command("push")
def _push(args) -> None:
    info = hub.push(
        args.folder,
        args.repo,
        hub=args.hub,
        repo_type=args.repo_type,
        message=args.message,
        branch=args.branch,
        tag=args.tag,
        include=args.include,
        exclude=args.exclude,
        max_file_size=args.max_file_size,
    )
    print(f"pushed {len(info.files)} file(s) to {args.repo} ({hub.get_store(args.hub).name})", file=sys.stderr)
    print(info.id)


@command("pull")
def _pull(args) -> None:
    path = hub.pull(
        args.repo,
        hub=args.hub,
        repo_type=args.repo_type,
        revision=args.revision,
        to=args.to,
        include=args.include,
        exclude=args.exclude,
        offline=args.offline or None,
    )
    print(path)


@command("ls")
def _ls(args) -> None:
    if args.repo is None:
        for ref in hub.list_repos(hub=args.hub, repo_type=args.repo_type_filter):
            print(f"{ref.repo_type:<8} {ref.repo_id}")
        return
    for rev in hub.list_revisions(args.repo, hub=args.hub, repo_type=args.repo_type):
        refs = f" ({', '.join(rev.refs)})" if rev.refs else ""
        print(f"{rev.id[:12]}  {rev.time[:19]}  {rev.message}{refs}")


@command("tag")
def _tag(args) -> None:
    info = hub.tag(
        args.repo, args.name, hub=args.hub, revision=args.revision, repo_type=args.repo_type, force=args.force
    )
    print(info.id)


@command("sync")
def _sync(args) -> None:
    pushed = hub.sync(
        args.repo,
        src=args.src,
        dst=args.dst,
        repo_type=args.repo_type,
        revision=args.revision,
        all_revisions=args.all,
        dst_repo_id=args.to_repo,
    )
    for info in pushed:
        print(info.id)


@command("gc")
def _gc(args) -> None:
    for report in hub.gc(args.repo, hub=args.hub, repo_type=args.repo_type, dry_run=args.dry_run):
        print(report)


@command("card")
def _card(args) -> int:
    from . import cards

    folder = hub.pull(
        args.repo, hub=args.hub, repo_type=args.repo_type, revision=args.revision, offline=args.offline or None
    )
    if not (folder / "README.md").is_file():
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        print(_as_text({"repo": args.repo, "repo_type": args.repo_type, "card": None, "files": files}))
        print(
            f"problem: {args.repo} has no README.md card; add one (hubkit.cards builds them) and push", file=sys.stderr
        )
        return 1
    card = cards.read_card(folder, repo_type=args.repo_type)
    summary = cards.card_summary(card)
    print(json.dumps(summary, indent=2, default=str) if args.json else _as_text(summary))
    problems = cards.validate_card(folder, repo_type=args.repo_type)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _as_text(summary: dict) -> str:
    import yaml

    return yaml.safe_dump(summary, sort_keys=False, allow_unicode=True).rstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hubkit", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("push", help="push a folder as a new revision; prints the revision id last")
    p.add_argument("folder")
    p.add_argument("repo", help="namespace/name")
    _store_args(p)
    p.add_argument("-m", "--message", default=None)
    p.add_argument("--branch", default="main")
    p.add_argument("--tag", default=None, help="also tag the new revision")
    p.add_argument("--include", action="append", default=None, metavar="GLOB")
    p.add_argument("--exclude", action="append", default=None, metavar="GLOB")
    p.add_argument("--max-file-size", type=int, default=None, metavar="BYTES")

    p = sub.add_parser("pull", help="fetch a repo; prints the local folder last")
    p.add_argument("repo")
    _store_args(p)
    p.add_argument("--revision", default=None, help="revision id (or unique prefix), branch or tag")
    p.add_argument("--to", default=None, metavar="DIR", help="copy into DIR (unchanged files are not copied)")
    p.add_argument("--include", action="append", default=None, metavar="GLOB")
    p.add_argument("--exclude", action="append", default=None, metavar="GLOB")

    p = sub.add_parser("ls", help="list repos, or one repo's revisions (newest first)")
    p.add_argument("repo", nargs="?")
    _store_args(p, repo_type=False)
    p.add_argument("--repo-type", dest="repo_type_filter", default=None, choices=hub.REPO_TYPES)
    p.set_defaults(repo_type=None)

    p = sub.add_parser("tag", help="tag a revision")
    p.add_argument("repo")
    p.add_argument("name")
    _store_args(p)
    p.add_argument("--revision", default=None)
    p.add_argument("--force", action="store_true", help="move the tag if it points elsewhere")

    p = sub.add_parser("sync", help="copy a repo between stores (local -> hf to publish, hf -> local to mirror)")
    p.add_argument("repo")
    p.add_argument("--from", dest="src", required=True, help="local | hf | a folder")
    p.add_argument("--to", dest="dst", required=True, help="local | hf | a folder")
    p.add_argument("--to-repo", default=None, help="name in the target store (default: the same)")
    p.add_argument("--revision", default=None)
    p.add_argument("--all", action="store_true", help="copy every revision, oldest first")
    _store_args(p, hub_flag=False)

    p = sub.add_parser(
        "gc",
        help="free what killed pushes left in a local store; prints one line per repo",
        description="Remove, from a local store, objects, snapshots and revision files that no branch or tag "
        "reaches, and the temp files of pushes that died. It deletes by default (only what no ref reaches: "
        "every revision `ls` shows stays); --dry-run reports without deleting. Safe beside running pushes: "
        "it takes each repo's push lock and keeps what a running push is writing.",
    )
    p.add_argument("repo", nargs="?", help="namespace/name (default: every repo in the store)")
    _store_args(p, repo_type=False)
    p.add_argument("--repo-type", default=None, choices=hub.REPO_TYPES, help="default: model with REPO, else all")
    p.add_argument("--dry-run", action="store_true", help="print what would be freed; delete nothing")

    p = sub.add_parser("card", help="show a repo's README.md card and report problems")
    p.add_argument("repo")
    _store_args(p)
    p.add_argument("--revision", default=None)
    p.add_argument("--json", action="store_true")

    for register in _EXTENSIONS:
        register(sub)
    return parser


# Commands defined in higher layers add themselves here (serve, bootstrap, lora, predict).
_EXTENSIONS: list[Callable[[argparse._SubParsersAction], None]] = []


def _load_extensions() -> None:
    from . import _cli_more  # noqa: F401  (registers its commands)


def main(argv: list[str] | None = None) -> int:
    """Run one command: exit 0, or 1 with a one-line reason on stderr (-vv also logs the traceback)."""
    _load_extensions()
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from ._logging import install_redaction, redact

    install_redaction()
    if getattr(args, "offline", False):
        os.environ["HF_HUB_OFFLINE"] = "1"

    def fail(err: BaseException) -> int:
        logging.getLogger("hubkit.cli").debug("hubkit %s failed", args.command, exc_info=err)
        notes = " ".join(getattr(err, "__notes__", []))
        reason = " ".join(f"{err} {notes}".split()) or type(err).__name__  # one line, whatever the library wrote
        print(f"hubkit {args.command}: {redact(reason)}", file=sys.stderr)
        return 1

    def stdout_closed() -> bool:
        """True if stdout is a pipe nobody reads any more (`hubkit ls | head -1`); then point it at devnull."""
        import select

        try:
            fd = sys.stdout.fileno()
            poller = select.poll()  # a pipe whose reader is gone polls as an error
            poller.register(fd, select.POLLOUT)
            if not any(event & select.POLLERR for _, event in poller.poll(0)):
                return False  # the broken pipe was another one (a socket, a subprocess)
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)  # so Python's flush at exit does not report it either
        except (OSError, ValueError, AttributeError):  # stdout is no real file (captured): the pipe was another
            return False
        return True

    try:
        code = COMMANDS[args.command](args) or 0
        sys.stdout.flush()  # a closed pipe surfaces here, not in Python's shutdown, which would print it
        return code
    except BrokenPipeError as err:  # the reader went away: quiet, like `git log | head -1`, but exit 0 as promised
        return 0 if stdout_closed() else fail(err)
    except (HubkitError, OSError, ValueError) as err:  # ours, then disk full / permissions / a library's refusal
        return fail(err)
    except KeyboardInterrupt:
        print(f"hubkit {args.command}: interrupted", file=sys.stderr)
        return 130
