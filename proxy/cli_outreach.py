"""`portico outreach link|pixel`: signed tracked URLs for e-mails and posts.

    portico outreach link  -c portico.yaml --campaign spring-appeal --url https://www.example.org/donate
    portico outreach pixel -c portico.yaml --campaign spring-appeal [--recipient ada@example.org ...]

URLs are signed with the gateway's tracking secret (the same file/variable the gateway
uses, so run this where the gateway's configuration and data directory are). Output:
one URL per line, or with several recipients one `recipient<TAB>url` line each
(`--json` for a JSON list). The recipient never appears in a URL, only a keyed pseudonym.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from addons.outreachlinks import OutreachError, make_tracked_urls
from proxy.cli_common import CliError
from proxy.config import load_config
from proxy.schema import ConfigError
from proxy.tracking_setup import load_secret


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `portico outreach link|pixel` to the `portico` parser."""
    outreach = subparsers.add_parser("outreach", help="signed tracked links and open pixels for campaigns")
    sub = outreach.add_subparsers(dest="outreach_command", metavar="link|pixel", parser_class=type(outreach))
    sub.required = True
    for name, helptext in (("link", "a tracked click URL that redirects to --url"),
                           ("pixel", "a 1x1 open-tracking image URL for an e-mail")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", "-c", required=True, metavar="FILE", help="Portico YAML configuration")
        p.add_argument("--campaign", required=True, help="campaign name: 1-64 of A-Z a-z 0-9 _ . -")
        p.add_argument("--recipient", action="append", default=None, metavar="R",
                       help="recipient id or address (repeatable; needs tracking.recipients: true)")
        if name == "link":
            p.add_argument("--url", required=True, help="where the link leads (http or https)")
        p.add_argument("--base-url", default=None,
                       help="the gateway's public origin, e.g. https://www.example.org (default: its listen address)")
        p.add_argument("--sent-at", type=float, default=None, metavar="UNIX_TIME",
                       help="when the message goes out (default: now); hits soon after are flagged as machines")
        p.add_argument("--json", action="store_true", help="print a JSON list")
        p.set_defaults(func=cmd_outreach)


def cmd_outreach(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        secret = load_secret(config)
    except ConfigError as e:
        raise CliError(str(e), exit_code=2) from None
    assert secret is not None
    base = args.base_url
    if base is None:
        host, port = config.listen
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    try:
        urls = make_tracked_urls(secret, base, args.campaign, url=getattr(args, "url", None),
                                 recipients=args.recipient or [None], sent_at=args.sent_at,
                                 reserved_prefix=config.reserved_prefix, recipient_tracking=config.tracking.recipients)
    except OutreachError as e:
        raise CliError(str(e), exit_code=2) from None
    which = "link" if args.outreach_command == "link" else "pixel"
    rows: list[dict[str, Any]] = [{"recipient": u.recipient, "url": getattr(u, which)} for u in urls]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    elif len(rows) == 1 and rows[0]["recipient"] is None:
        print(rows[0]["url"])
    else:
        for row in rows:
            print(f"{row['recipient']}\t{row['url']}")
    return 0
