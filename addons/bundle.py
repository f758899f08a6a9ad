"""Several addons as one entry in mitmproxy's addon chain.

Not an addon of its own: proxy/tracking_setup.py wraps the tracking addons in two bundles
(the endpoints + HTML editor, placed before Endpoints; the recorder + access log, placed
last).

Why: mitmproxy dispatches every event (requestheaders, request, responseheaders,
response, server_connect, ...) to every entry of its chain through a `safecall` context
manager, a coroutine and two generators, whether or not the addon has that hook. Measured
on the gateway: ~12 us of CPU per request for each entry, even an empty one; six tracking
entries cost ~10% of the gateway's throughput before doing any work. A bundle is one
entry: it calls its parts' hooks directly, in order, and only the hooks they define.

Parts keep their own hook methods (unit tests call them directly). `visible` parts are
also exposed to mitmproxy as child addons, so `master.addons.get(name)` finds them and
mitmproxy itself calls their hooks (after the bundle's); use that for a part other code
looks up by name, not for the hot ones. A part with a hook the bundle doesn't forward is
refused at construction, so nothing is silently dropped.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import mitmproxy.addonmanager  # noqa: F401 - these imports register mitmproxy's hook names
import mitmproxy.proxy.layers  # noqa: F401
import mitmproxy.proxy.server_hooks  # noqa: F401
from mitmproxy import hooks

FORWARDED = ("request", "response", "error", "running", "done")


class BundleError(ValueError):
    """A part defines a hook the bundle does not forward (names the part and the hook)."""


class Bundle:
    """Calls the hooks of `parts` as one mitmproxy addon (see the module docstring)."""

    def __init__(self, name: str, parts: Sequence[Any], visible: Sequence[Any] = ()) -> None:
        self.name = name  # mitmproxy registers addons by `name`
        self.parts = tuple(parts)
        if visible:
            self.addons = list(visible)  # mitmproxy's convention for child addons
        known = set(hooks.all_hooks)
        for part in self.parts:
            for hook in known - set(FORWARDED):
                if callable(getattr(part, hook, None)):
                    raise BundleError(f"{type(part).__name__}.{hook}: the bundle forwards only "
                                      f"{', '.join(FORWARDED)}; add the part to the chain itself")
        self._hooks: dict[str, tuple[Callable[..., Any], ...]] = {
            hook: tuple(getattr(p, hook) for p in self.parts if callable(getattr(p, hook, None))) for hook in FORWARDED}

    def _call(self, hook: str, *args: Any) -> Awaitable[None] | None:
        """Call the parts' `hook` in order; if one returns an awaitable, return a coroutine that
        awaits it and then calls the rest (mitmproxy awaits what a hook returns)."""
        funcs = self._hooks[hook]
        for i, func in enumerate(funcs):
            result = func(*args)
            if result is not None and inspect.isawaitable(result):
                return self._finish(result, funcs[i + 1:], args)
        return None

    @staticmethod
    async def _finish(pending: Awaitable[Any], rest: tuple[Callable[..., Any], ...], args: tuple[Any, ...]) -> None:
        await pending
        for func in rest:
            result = func(*args)
            if result is not None and inspect.isawaitable(result):
                await result

    def request(self, flow: Any) -> Awaitable[None] | None:
        return self._call("request", flow)

    def response(self, flow: Any) -> Awaitable[None] | None:
        return self._call("response", flow)

    def error(self, flow: Any) -> Awaitable[None] | None:
        return self._call("error", flow)

    def running(self) -> Awaitable[None] | None:
        return self._call("running")

    def done(self) -> Awaitable[None] | None:
        return self._call("done")
