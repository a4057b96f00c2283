"""Commands on the hub stores: push, pull, ls, tag, sync, gc, card."""

from __future__ import annotations

import json
import sys

from .. import hub
from ._registry import arg, command

GLOB = {"action": "append", "default": None, "metavar": "GLOB"}


@command(
    "push",
    arg("folder"),
    arg("repo", help="namespace/name"),
    arg("-m", "--message", default=None),
    arg("--branch", default="main"),
    arg("--tag", default=None, help="also tag the new revision"),
    arg("--include", **GLOB),
    arg("--exclude", **GLOB),
    arg("--max-file-size", type=int, default=None, metavar="BYTES"),
    help="push a folder as a new revision; prints the revision id last",
    options=("hub", "repo-type", "offline"),
)
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


@command(
    "pull",
    arg("repo"),
    arg("--revision", default=None, help="revision id (or unique prefix), branch or tag"),
    arg("--to", default=None, metavar="DIR", help="copy into DIR (unchanged files are not copied)"),
    arg("--include", **GLOB),
    arg("--exclude", **GLOB),
    help="fetch a repo; prints the local folder last",
    options=("hub", "repo-type", "offline"),
)
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


@command(
    "ls",
    arg("repo", nargs="?"),
    help="list repos, or one repo's revisions (newest first)",
    options=("hub", "offline", "any-repo-type"),
)
def _ls(args) -> None:
    if args.repo is None:
        for ref in hub.list_repos(hub=args.hub, repo_type=args.repo_type):
            print(f"{ref.repo_type:<8} {ref.repo_id}")
        return
    for rev in hub.list_revisions(args.repo, hub=args.hub, repo_type=args.repo_type or "model"):
        refs = f" ({', '.join(rev.refs)})" if rev.refs else ""
        print(f"{rev.id[:12]}  {rev.time[:19]}  {rev.message}{refs}")


@command(
    "tag",
    arg("repo"),
    arg("name"),
    arg("--revision", default=None),
    arg("--force", action="store_true", help="move the tag if it points elsewhere"),
    help="tag a revision",
    options=("hub", "repo-type", "offline"),
)
def _tag(args) -> None:
    info = hub.tag(
        args.repo, args.name, hub=args.hub, revision=args.revision, repo_type=args.repo_type, force=args.force
    )
    print(info.id)


@command(
    "sync",
    arg("repo"),
    arg("--from", dest="src", required=True, help="local | hf | a folder"),
    arg("--to", dest="dst", required=True, help="local | hf | a folder"),
    arg("--to-repo", default=None, help="name in the target store (default: the same)"),
    arg("--revision", default=None),
    arg("--all", action="store_true", help="copy every revision, oldest first"),
    help="copy a repo between stores (local -> hf to publish, hf -> local to mirror)",
    options=("repo-type", "offline"),
)
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


@command(
    "gc",
    arg("repo", nargs="?", help="namespace/name (default: every repo in the store)"),
    arg("--dry-run", action="store_true", help="print what would be freed; delete nothing"),
    help="free what killed pushes left in a local store; prints one line per repo",
    description="Remove, from a local store, objects, snapshots and revision files that no branch or tag "
    "reaches, and the temp files of pushes that died. It deletes by default (only what no ref reaches: "
    "every revision `ls` shows stays); --dry-run reports without deleting. Safe beside running pushes: "
    "it takes each repo's push lock and keeps what a running push is writing.",
    options=("hub", "offline", "any-repo-type"),
)
def _gc(args) -> None:
    for report in hub.gc(args.repo, hub=args.hub, repo_type=args.repo_type, dry_run=args.dry_run):
        print(report)


@command(
    "card",
    arg("repo"),
    arg("--revision", default=None),
    arg("--json", action="store_true"),
    help="show a repo's README.md card and report problems",
    options=("hub", "repo-type", "offline"),
)
def _card(args) -> int:
    from .. import cards

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
