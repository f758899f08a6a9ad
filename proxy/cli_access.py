"""`portico access check`: which access rule decides a request, and why.

Uses the same `addons.acl.AccessPolicy` as the gateway (reserved-prefix exceptions
included), on the `access_control:` section of a configuration file. Nothing is contacted:
the user's groups are given on the command line.

    portico access check --config portico.yaml --url https://app.example.org/members/ \\
        --user alice --groups members,staff --ip 10.1.2.3 --method GET
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from urllib.parse import urlsplit

from addons.acl import AccessPolicy, AclSettings
from auth.access import RequestInfo, Subject, unclear_path
from proxy import auth_setup
from proxy.cli_common import CliError
from proxy.config import load_config
from proxy.schema import ConfigError

_OUTCOME_TEXT = {"allow": "ALLOW", "login": "LOGIN REQUIRED", "deny": "DENY (403)", "refused": "REFUSED (400)"}


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the `access` subcommand group."""
    access = subparsers.add_parser("access", help="explain the access_control rules")
    sub = access.add_subparsers(dest="access_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="which rule decides a request, and why")
    check.add_argument("--config", "-c", required=True, metavar="FILE", help="the gateway's YAML file")
    check.add_argument("--url", required=True, help="the full URL, e.g. https://app.example.org/path")
    check.add_argument("--user", default=None, help="the signed-in user (default: not signed in)")
    check.add_argument("--groups", default="", help="the user's groups, comma-separated")
    check.add_argument("--ip", default=None, help="the client address (default: none, so network rules don't match)")
    check.add_argument("--method", default="GET", help="the HTTP method (default GET)")
    check.add_argument("--json", action="store_true", help="one JSON document instead of text")
    check.set_defaults(func=cmd_access_check)


def _request(args: argparse.Namespace) -> RequestInfo:
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"--url: expected a full URL like 'https://app.example.org/path', got {args.url!r}", 2)
    if args.ip is not None:
        try:
            ipaddress.ip_address(args.ip)
        except ValueError:
            raise CliError(f"--ip: expected an IP address like '10.0.0.7', got {args.ip!r}", 2) from None
    method = args.method.upper()
    if not method.isalpha():
        raise CliError(f"--method: expected an HTTP method like GET or POST, got {args.method!r}", 2)
    if args.groups and not args.user:
        raise CliError("--groups: give --user too (groups belong to a signed-in user)", 2)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return RequestInfo(host=parts.netloc, path=path, method=method, client_ip=args.ip)


def cmd_access_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as e:
        raise CliError(str(e), 2) from None
    request = _request(args)
    control = auth_setup.access_control(config)
    who = Subject(args.user, tuple(g.strip() for g in args.groups.split(",") if g.strip())) if args.user else None
    unclear = unclear_path(request.path) if control is not None else None
    if unclear is not None:  # what addons/acl.py answers before any rule
        result = {"outcome": "refused", "policy": "-", "rule": "none",
                  "reason": f"no rule is asked: {unclear}", "trace": []}
    elif control is None:
        result = {"outcome": "allow", "policy": "bypass", "rule": "none",
                  "reason": f"{args.config} has no access_control or auth section: every request is allowed",
                  "trace": []}
    else:
        decision = AccessPolicy(AclSettings(control=control, reserved_prefix=config.reserved_prefix)).decide(
            request, who)
        result = {"outcome": decision.outcome, "policy": decision.policy, "rule": decision.rule,
                  "reason": decision.reason, "trace": list(decision.trace)}
    if args.json:
        print(json.dumps(result | {"url": args.url, "method": request.method, "user": args.user,
                                   "groups": list(who.groups) if who else [], "ip": args.ip}, indent=2))
        return 0
    who_text = (f"user {args.user!r} (groups: {', '.join(who.groups) or '-'})" if who else "not signed in")
    print(f"request:  {request.method} {args.url} from {args.ip or 'unknown address'}, {who_text}")
    print(f"decision: {_OUTCOME_TEXT[result['outcome']]} (policy {result['policy']}, rule {result['rule']})")
    print(f"why:      {result['reason']}")
    if result["trace"]:
        print("rules that did not match, in order:")
        for line in result["trace"]:
            print(f"  - {line}")
    if result["outcome"] == "login":
        print("note:     a signed-in user may get a different answer: try again with --user/--groups")
    return 0
