"""Signed tracked URLs for e-mails and posts: pure functions, no I/O.

Not an addon: used by `outreach.py` (to verify), `proxy/cli_outreach.py` (`portico
outreach link|pixel`) and the gRPC service (bulk, for a mailing module), which gets
`make_tracked_urls` handed in by proxy/ (proto/ must not import addons/).

Pixel:  <base><prefix>px.gif?c=<campaign>[&r=<recipient pseudonym>]&t=<sent, unix s>&s=<sig>
Click:  <base><prefix>c?c=<campaign>[&r=...]&t=...&u=<target URL>&s=<sig>
The recipient is never in the URL: only a keyed pseudonym (signing.pseudonym), so counts
survive a recipient's deletion and the URL reveals no address.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlsplit

from addons.attribution import CAMPAIGN_RE
from addons.signing import pseudonym, sign, verify

PIXEL_PURPOSE = "pixel"
CLICK_PURPOSE = "click"


class OutreachError(ValueError):
    """Bad input to make a tracked URL; the message names the field and what is allowed."""


@dataclass(frozen=True, slots=True)
class TrackedUrls:
    recipient: str | None   # as given (for the caller to match rows); never in the URLs
    pixel: str
    link: str | None


@dataclass(frozen=True, slots=True)
class OutreachHit:
    campaign: str
    recipient: str | None   # the pseudonym
    sent_at: int | None
    target: str | None      # clicks only


def _params(campaign: str, recipient_pseudonym: str | None, sent_at: int) -> dict[str, str]:
    params = {"c": campaign, "t": str(sent_at)}
    if recipient_pseudonym:
        params["r"] = recipient_pseudonym
    return params


def _query(params: dict[str, str]) -> str:
    order = [k for k in ("c", "r", "t", "u", "s") if k in params]
    return "&".join(f"{k}={quote(params[k], safe='')}" for k in order)


def make_tracked_urls(secret: bytes, base_url: str, campaign: str, *, url: str | None = None,
                      recipients: Iterable[str | None] = (None,), sent_at: float | None = None,
                      reserved_prefix: str = "/_portico/", recipient_tracking: bool = False) -> list[TrackedUrls]:
    """Pixel (and click, when `url` is given) URLs for each recipient of a campaign.

    Args:
        secret: the tracking secret (proxy/tracking_setup.py `load_secret`).
        base_url: the gateway's public origin, e.g. "https://www.example.org".
        campaign: `[A-Za-z0-9_.-]{1,64}`.
        url: the target of the click link (http or https), or None for pixels only.
        recipients: recipient identifiers (e-mail, id); None for a campaign-level URL.
        sent_at: when the message is sent (unix time; default now): opens and clicks within
            seconds of it are flagged as machine traffic.
        recipient_tracking: must be True (config `tracking.recipients`) to pass recipients.

    Raises:
        OutreachError: bad campaign, URL or base URL, or recipients while recipient tracking is off.
    """
    if not isinstance(campaign, str) or not CAMPAIGN_RE.match(campaign):
        raise OutreachError(f"campaign: expected 1-64 characters of A-Z a-z 0-9 _ . -, got {campaign!r}")
    base = urlsplit(base_url)
    if base.scheme not in ("http", "https") or not base.netloc or base.query or base.fragment:
        raise OutreachError(f"base_url: expected the gateway's origin like 'https://www.example.org', got {base_url!r}")
    if url is not None:
        target = urlsplit(url)
        if target.scheme not in ("http", "https") or not target.netloc:
            raise OutreachError(f"url: expected an absolute http(s) URL, got {url!r}")
    origin = f"{base.scheme}://{base.netloc}{base.path.rstrip('/')}"
    ts = int(sent_at if sent_at is not None else time.time())
    out = []
    for recipient in recipients:
        if recipient is not None and not recipient_tracking:
            raise OutreachError("recipient: recipient-level tracking is off (tracking.recipients: false); "
                                "leave the recipient out or enable it in the configuration")
        if recipient is not None and (not isinstance(recipient, str) or not recipient.strip()):
            raise OutreachError(f"recipient: expected a non-empty string, got {recipient!r}")
        pseudo = pseudonym(secret, "recipient", recipient.strip().lower()) if recipient else None
        params = _params(campaign, pseudo, ts)
        pixel = f"{origin}{reserved_prefix}px.gif?{_query(params | {'s': sign(secret, PIXEL_PURPOSE, params)})}"
        link = None
        if url is not None:
            cparams = params | {"u": url}
            link = f"{origin}{reserved_prefix}c?{_query(cparams | {'s': sign(secret, CLICK_PURPOSE, cparams)})}"
        out.append(TrackedUrls(recipient, pixel, link))
    return out


def parse_hit(secret: bytes, purpose: str, query: str) -> OutreachHit | str:
    """The verified content of a pixel/click query, or the reason it is refused."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    if not params.get("c") or "s" not in params or "t" not in params:
        return "the link is incomplete (campaign, time or signature missing)"
    if purpose == CLICK_PURPOSE and not params.get("u"):
        return "the link has no target"
    allowed = {"c", "r", "t", "u", "s"} if purpose == CLICK_PURPOSE else {"c", "r", "t", "s"}
    extra: Sequence[str] = [k for k in params if k not in allowed]
    signed = {k: v for k, v in params.items() if k in allowed}
    if not verify(secret, purpose, signed):
        return "the link's signature does not match its content"
    if not CAMPAIGN_RE.match(params["c"]) or not params["t"].isdigit():
        return "the link's campaign or time is malformed"
    if purpose == CLICK_PURPOSE and urlsplit(params["u"]).scheme not in ("http", "https"):
        return "the target is not an http(s) URL"
    del extra  # unsigned extras (e.g. a mail client's own tags) are ignored, never trusted
    return OutreachHit(params["c"], params.get("r") or None, int(params["t"]), params.get("u"))
