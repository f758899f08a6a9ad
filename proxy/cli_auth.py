"""`portico users add|passwd|list|remove` (users.yaml) and `portico auth bans|unban|session-key`.

Thin wrappers over `auth.users.UsersFile` and `auth.throttle.Regulator`: parse arguments,
call the library, print. Passwords are read from the terminal without echo (asked twice),
or from one line of standard input with `--password-stdin` (for scripts); never from
the command line, where `ps` and shell history would show them.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import sys
from pathlib import Path

from auth.errors import AuthError
from auth.sessions import generate_key
from auth.throttle import REGULATION_DIRNAME, Regulator
from auth.users import DEFAULT_N, UsersFile
from proxy.cli_common import CliError


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `users` and `auth` subcommand groups."""
    users = subparsers.add_parser("users", help="manage the users.yaml file backend")
    users_sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    add = users_sub.add_parser("add", help="add a user (asks for the password)")
    _file_arg(add)
    add.add_argument("username")
    add.add_argument("--display-name", default=None)
    add.add_argument("--email", default=None)
    add.add_argument("--group", "-g", action="append", default=[], metavar="GROUP",
                     help="a group of the user (repeat for several)")
    _password_args(add)
    add.set_defaults(func=cmd_users_add)

    passwd = users_sub.add_parser("passwd", help="set a user's password (asks for it)")
    _file_arg(passwd)
    passwd.add_argument("username")
    _password_args(passwd)
    passwd.set_defaults(func=cmd_users_passwd)

    lst = users_sub.add_parser("list", help="list users (never shows hashes)")
    _file_arg(lst)
    lst.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    lst.set_defaults(func=cmd_users_list)

    remove = users_sub.add_parser("remove", help="remove a user")
    _file_arg(remove)
    remove.add_argument("username")
    remove.set_defaults(func=cmd_users_remove)

    auth = subparsers.add_parser("auth", help="login regulation (bans) and session keys")
    auth_sub = auth.add_subparsers(dest="auth_command", metavar="ACTION", required=True)

    bans = auth_sub.add_parser("bans", help="list active bans of users and client addresses")
    _data_arg(bans)
    bans.add_argument("--json", action="store_true")
    bans.set_defaults(func=cmd_auth_bans)

    unban = auth_sub.add_parser("unban", help="lift a ban: USER, IP, user:NAME or address:IP")
    _data_arg(unban)
    unban.add_argument("subject")
    unban.set_defaults(func=cmd_auth_unban)

    key = auth_sub.add_parser("session-key", help="print a new random session signing key")
    key.set_defaults(func=cmd_auth_session_key)


def _file_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", "-f", required=True, metavar="USERS_YAML", help="the users file")


def _data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", "-d", required=True, metavar="DIR",
                   help=f"the gateway's data directory (bans live in DIR/{REGULATION_DIRNAME})")


def _password_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    p.add_argument("--cost", type=int, default=DEFAULT_N, metavar="N",
                   help=f"scrypt cost n, a power of two (default {DEFAULT_N})")


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CliError("no terminal to ask for the password; use --password-stdin", 2)
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CliError("the two passwords differ; nothing changed", 2)
    if not password:
        raise CliError("empty password refused; nothing changed", 2)
    return password


def _users(path: str, must_exist: bool = True) -> UsersFile:
    try:
        return UsersFile(path, must_exist=must_exist)
    except AuthError as e:
        raise CliError(str(e), 2) from None


def cmd_users_add(args: argparse.Namespace) -> int:
    users = _users(args.file, must_exist=False)
    password = _read_password(args)
    try:
        user = users.add(args.username, password, display_name=args.display_name,
                         email=args.email, groups=tuple(args.group), n=args.cost)
    except AuthError as e:
        raise CliError(str(e), 2) from None
    print(f"{args.file}: added {user.username!r} (groups: {', '.join(user.groups) or '-'})")
    return 0


def cmd_users_passwd(args: argparse.Namespace) -> int:
    users = _users(args.file)
    password = _read_password(args)
    try:
        user = users.update(args.username, password=password, n=args.cost)
    except AuthError as e:
        raise CliError(str(e), 2) from None
    print(f"{args.file}: password of {user.username!r} changed")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    users = _users(args.file)
    try:
        rows = users.users()
    except AuthError as e:
        raise CliError(str(e), 2) from None
    if args.json:
        print(json.dumps([{"username": u.username, "display_name": u.display_name,
                           "email": u.email, "groups": list(u.groups), "disabled": u.disabled}
                          for u in rows], indent=2))
        return 0
    print(f"{'USERNAME':<20} {'DISABLED':<8} {'EMAIL':<28} GROUPS")
    for u in rows:
        print(f"{u.username:<20} {'yes' if u.disabled else 'no':<8} {u.email or '-':<28} "
              f"{','.join(u.groups) or '-'}")
    return 0


def cmd_users_remove(args: argparse.Namespace) -> int:
    users = _users(args.file)
    try:
        users.remove(args.username)
    except AuthError as e:
        raise CliError(str(e), 2) from None
    print(f"{args.file}: removed {args.username!r}")
    return 0


def _regulator(data: str) -> Regulator:
    path = Path(data) / REGULATION_DIRNAME
    if not path.is_dir():
        raise CliError(f"{path}: no regulation store here (is --data the gateway's data "
                       "directory?)", 2)
    try:
        return Regulator.open(path)
    except AuthError as e:
        raise CliError(str(e), 1) from None


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_auth_bans(args: argparse.Namespace) -> int:
    with _regulator(args.data) as regulator:
        bans = regulator.bans()
    if args.json:
        print(json.dumps([{"subject": b.subject, "since": b.since, "until": b.until,
                           "failures": b.failures} for b in bans], indent=2))
        return 0
    if not bans:
        print("no active bans")
        return 0
    print(f"{'SUBJECT':<40} {'SINCE':<21} {'UNTIL':<21} FAILURES")
    for b in bans:
        print(f"{b.subject:<40} {_when(b.since):<21} {_when(b.until):<21} {b.failures}")
    return 0


def cmd_auth_unban(args: argparse.Namespace) -> int:
    with _regulator(args.data) as regulator:
        try:
            subject = regulator.normalize_subject(args.subject)
            lifted = regulator.unban(subject)
        except ValueError as e:
            raise CliError(f"subject {args.subject!r}: {e}", 2) from None
    if not lifted:
        raise CliError(f"{subject} is not banned", 1)
    print(f"unbanned {subject}")
    return 0


def cmd_auth_session_key(args: argparse.Namespace) -> int:  # noqa: ARG001
    print(generate_key())
    return 0
