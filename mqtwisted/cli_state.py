"""``mqmta pause add|list|remove`` and ``mqmta suppress add|list|remove``: the operator's pauses
and suppression list, written where the MTA reads them (``state.sqlite3`` in the data directory,
or the ``--state redis://…`` the nodes share).  A running MTA sees a change within a second
(:data:`mqtwisted.state.keeper.POLL_INTERVAL`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from mqtwisted.shaping.rates import parse_duration


def add_parsers(sub: Any, where: argparse.ArgumentParser) -> None:
    """The ``pause`` and ``suppress`` commands, on ``mqmta``'s subparsers."""
    def duration(text: str) -> float:
        try:
            return parse_duration(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    listing = argparse.ArgumentParser(add_help=False, parents=[where])
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    p = sub.add_parser("pause", help="hold deliveries by sending IP or pool, domain and tag",
                       parents=[where]).add_subparsers(dest="action", required=True)
    a = p.add_parser("add", help="add a pause (each of --source, --domain, --tag left out: any)", parents=[where])
    a.add_argument("--source", help="a sending IP or a pool name")
    a.add_argument("--domain", help="the recipients' domain")
    a.add_argument("--tag", help="one of the messages' tags")
    a.add_argument("--for", dest="duration", type=duration, help="ends after this long (60s, 5m, 2h, 1d; "
                   "default: when removed)")
    a.add_argument("--reason", default="", help="a note shown by list")
    p.add_parser("list", help="the pauses in force", parents=[listing])
    r = p.add_parser("remove", help="end a pause now", parents=[where])
    r.add_argument("id")

    s = sub.add_parser("suppress", help="recipients never sent to", parents=[where]).add_subparsers(
        dest="action", required=True)
    a = s.add_parser("add", help="suppress an address or a whole domain", parents=[where])
    a.add_argument("pattern", help="user@example.com, or example.com for the whole domain")
    a.add_argument("--code", type=int, default=550, help="the reply code recorded (5xx; default 550)")
    a.add_argument("--enhanced", default="5.7.1", help="the enhanced status code (default 5.7.1)")
    a.add_argument("--text", default="Recipient is on the suppression list", help="the reply text")
    a.add_argument("--for", dest="duration", type=duration, help="ends after this long (default: when removed)")
    s.add_parser("list", help="the suppression list", parents=[listing])
    r = s.add_parser("remove", help="take an address or domain off the list", parents=[where])
    r.add_argument("pattern")


def _backend(args: argparse.Namespace) -> Any:
    from mqtwisted.state.opening import open_backend

    state = getattr(args, "state", "") or ""
    if not state and not os.path.isdir(args.data_dir):
        raise SystemExit(f"mqmta: no data directory at {os.path.abspath(args.data_dir)} (wrong --data-dir?)")
    try:
        return open_backend(state, args.data_dir)
    except ValueError as e:
        raise SystemExit(f"mqmta: --state: {e}") from None


def _when(t: float | None) -> str:
    return "removed" if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def cmd_pause(args: argparse.Namespace) -> int:
    from mqtwisted.state.pauses import PauseList

    pauses = PauseList(_backend(args))
    if args.action == "add":
        try:
            p = pauses.add(args.source, args.domain, args.tag, args.duration, args.reason)
        except ValueError as e:
            raise SystemExit(f"mqmta: pause add: {e}") from None
        print(p.id)
    elif args.action == "list":
        for p in pauses.list():
            if args.json:
                print(json.dumps(p.to_json(), sort_keys=True))
            else:
                print(f"{p.id}  source={p.source or '*'} domain={p.domain or '*'} tag={p.tag or '*'} "
                      f"until={_when(p.until)}" + (f"  {p.reason}" if p.reason else ""))
    elif not pauses.remove(args.id):
        print(f"mqmta: no pause {args.id}", file=sys.stderr)
        return 1
    return 0


def cmd_suppress(args: argparse.Namespace) -> int:
    from mqtwisted.state.suppression import SuppressionList

    entries = SuppressionList(_backend(args))
    try:
        if args.action == "add":
            e = entries.add(args.pattern, args.code, args.enhanced, args.text, args.duration)
            print(f"suppressed {e.pattern}: {e.code} {e.enhanced} {e.text}")
        elif args.action == "list":
            for e in entries.list():
                if args.json:
                    print(json.dumps(e.to_json(), sort_keys=True))
                else:
                    print(f"{e.pattern}  {e.code} {e.enhanced} {e.text}  until={_when(e.until)}")
        elif not entries.remove(args.pattern):
            print(f"mqmta: {args.pattern} is not on the suppression list", file=sys.stderr)
            return 1
    except ValueError as e:
        raise SystemExit(f"mqmta: suppress {args.action}: {e}") from None
    return 0
