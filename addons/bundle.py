"""Several addons as one entry in mitmproxy's addon chain.

Not an addon of its own: proxy/tracking_setup.py wraps the tracking addons in bundles and
proxy/pipeline.py joins them with Endpoints into one chain entry (`chain_entry`).

Why: mitmproxy dispatches every event (requestheaders, request, responseheaders,
response, and an `update` after each of them, server_connect, ...) to every entry of its
chain through a `safecall` context manager, a coroutine and two generators, whether or
not the addon has that hook. Measured on the gateway: ~12 us of CPU per request for each
entry, even an empty one; six tracking entries cost ~10% of the gateway's throughput
before doing any work. A bundle is one entry: it calls its parts' hooks directly, in
order, and only the hooks they define.

- Parts keep their own hook methods (unit tests call them directly).
- `visible` parts are called like the others (after `parts`) and are also registered
  with mitmproxy under their addon name when the bundle loads, so
  `master.addons.get(name)` finds them (the gRPC outreach service looks for "outreach").
  They are not child addons: a child is one more object mitmproxy walks on every event.
- `after_chain` parts (the recorders) have their `response`/`error` hooks called when
  mitmproxy sends the flow's next `update`, which it does once the whole chain has run
  that hook (`AddonManager.handle_lifecycle`). So a bundle early in the chain still
  records each flow as the last addon would: after the cache, the guards and every
  other response hook, without an entry of its own at the end of the chain.
  The bundle has an `update` attribute only while some flow has such a hook due:
  mitmproxy sends `update` after every flow event (requestheaders, request,
  responseheaders, response...) and looks the hook up by name each time, so the other
  five or so per request cost a failed `getattr` instead of a call with `Hook.args()`.
- A part with a `request_paths` attribute (a set of exact request paths, no query) has its
  `request` hook called only for those paths: the bundle reads the path once and looks it
  up, instead of every endpoint decoding and comparing it on every request. Such parts
  are called before the others (they answer their own paths, so the order among them
  doesn't matter; Endpoints, which closes the rest of the prefix, comes after them).
- A part with a hook the bundle doesn't forward (or an `after_chain` part with a
  `request` hook, which can't be deferred) is refused at construction, so nothing is
  silently dropped or reordered.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import mitmproxy.addonmanager  # noqa: F401 - these imports register mitmproxy's hook names
import mitmproxy.proxy.layers  # noqa: F401
import mitmproxy.proxy.server_hooks  # noqa: F401
from mitmproxy import exceptions, hooks

FORWARDED = ("request", "response", "error", "running", "done")
DEFERRED = ("response", "error")

log = logging.getLogger("portico.bundle")
# what mitmproxy's own hook calls pass on instead of logging (a halt, a bad option): so does the bundle
_PASSED_ON = (exceptions.AddonHalt, exceptions.OptionsError)


class BundleError(ValueError):
    """A part defines a hook the bundle does not forward (names the part and the hook)."""


def addon_name(addon: Any) -> str:
    """The name mitmproxy registers an addon under: its `name`, else its lower-case class name."""
    return getattr(addon, "name", type(addon).__name__.lower())


class Bundle:
    """Calls the hooks of `parts` as one mitmproxy addon (see the module docstring)."""

    def __init__(self, name: str, parts: Sequence[Any], visible: Sequence[Any] = (),
                 after_chain: Sequence[Any] = (), *, named: Sequence[Any] = ()) -> None:
        """`visible` are called after `parts` and registered by name; `named` (among `parts`
        or `after_chain`, in their place) are registered by name too."""
        self.name = name  # mitmproxy registers addons by `name`
        self.parts = (*parts, *visible)
        self.visible = tuple(visible)
        self.registered = (*named, *visible)
        self.after_chain = tuple(after_chain)
        known = set(hooks.all_hooks)
        for part in (*self.parts, *self.after_chain):
            if isinstance(part, Bundle):
                raise BundleError(f"bundle {name!r}: a part is the bundle {part.name!r}; use chain_entry() "
                                  "to join bundles")
            for hook in known - set(FORWARDED):
                if callable(getattr(part, hook, None)):
                    raise BundleError(f"{type(part).__name__}.{hook}: the bundle forwards only "
                                      f"{', '.join(FORWARDED)}; add the part to the chain itself")
        for part in self.after_chain:
            if callable(getattr(part, "request", None)):
                raise BundleError(f"{type(part).__name__}.request: an after_chain part can't have a request "
                                  "hook (only response/error are deferred); add it to the chain itself")
        everyone = (*self.parts, *self.after_chain)
        self._hooks: dict[str, tuple[Callable[..., Any], ...]] = {
            hook: tuple(getattr(p, hook) for p in (self.parts if hook in DEFERRED else everyone)
                        if callable(getattr(p, hook, None)) and not (hook == "request" and _routed(p)))
            for hook in FORWARDED}
        routed: dict[str, list[Callable[..., Any]]] = {}
        for part in self.parts:
            if _routed(part) and callable(getattr(part, "request", None)):
                for path in part.request_paths:
                    routed.setdefault(path, []).append(part.request)
        self._routed = {path: (*funcs, *self._hooks["request"]) for path, funcs in routed.items()}
        self._due: dict[str, tuple[Callable[..., Any], ...]] = {
            hook: tuple(getattr(p, hook) for p in self.after_chain if callable(getattr(p, hook, None)))
            for hook in DEFERRED}
        # flow -> the after_chain hook due at its next `update`; `update` exists only while this
        # is not empty (a flow that ends without its update, e.g. killed, drops out when collected)
        self._due_flows: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    # --- mitmproxy hooks -----------------------------------------------------------------

    def load(self, loader: Any) -> None:
        """Register the visible and named parts by name (mitmproxy registers the bundle itself)."""
        lookup = loader.master.addons.lookup
        for part in self.registered:
            name = addon_name(part)
            if name in lookup:
                raise exceptions.AddonManagerError(f"An addon called '{name}' already exists.")
            lookup[name] = part

    def request(self, flow: Any) -> Awaitable[None] | None:
        if self._routed:
            funcs = self._routed.get(flow.request.path.partition("?")[0])
            if funcs is not None:
                return self._call(funcs, (flow,))
        return self._call(self._hooks["request"], (flow,))

    def response(self, flow: Any) -> Awaitable[None] | None:
        if self._due["response"]:
            self._mark_due(flow, "response")
        return self._call(self._hooks["response"], (flow,))

    def error(self, flow: Any) -> Awaitable[None] | None:
        if self._due["error"]:
            self._mark_due(flow, "error")
        return self._call(self._hooks["error"], (flow,))

    def running(self) -> Awaitable[None] | None:
        return self._call(self._hooks["running"], ())

    def done(self) -> Awaitable[None] | None:
        return self._call(self._hooks["done"], ())

    def _mark_due(self, flow: Any, hook: str) -> None:
        """`hook` of the after_chain parts is due at the flow's next `update`."""
        self._due_flows[flow] = hook
        self.update = self._update

    def _update(self, flows: Sequence[Any]) -> Awaitable[None] | None:
        """The after_chain parts' deferred hook for each flow that has one due."""
        pending: list[Awaitable[Any]] = []
        for flow in flows:
            hook = self._due_flows.pop(flow, None)
            if hook is not None:
                result = self._call(self._due[hook], (flow,))
                if result is not None:
                    pending.append(result)
        if not self._due_flows and "update" in self.__dict__:
            del self.update  # nothing due: mitmproxy's next `update` finds no hook here
        return self._gather(pending) if pending else None

    # --- calling ---------------------------------------------------------------------------

    def _call(self, funcs: tuple[Callable[..., Any], ...], args: tuple[Any, ...]) -> Awaitable[None] | None:
        """Call `funcs` in order; if one returns an awaitable, return a coroutine that awaits
        it and then calls the rest (mitmproxy awaits what a hook returns). A part that raises
        is logged and the next part still runs, as mitmproxy does for separate addons: a bug
        in one endpoint must not skip Endpoints, which answers the rest of the reserved prefix."""
        for i, func in enumerate(funcs):
            try:
                result = func(*args)
            except _PASSED_ON:
                raise
            except Exception:  # noqa: BLE001 - logged like mitmproxy's "Addon error"
                _log_part_error(func)
                continue
            if result is not None and inspect.isawaitable(result):
                return self._finish(result, funcs[i + 1:], args, func)
        return None

    @staticmethod
    async def _finish(pending: Awaitable[Any], rest: tuple[Callable[..., Any], ...], args: tuple[Any, ...],
                      pending_func: Callable[..., Any]) -> None:
        try:
            await pending
        except _PASSED_ON:
            raise
        except Exception:  # noqa: BLE001
            _log_part_error(pending_func)
        for func in rest:
            try:
                result = func(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except _PASSED_ON:
                raise
            except Exception:  # noqa: BLE001
                _log_part_error(func)

    @staticmethod
    async def _gather(pending: list[Awaitable[Any]]) -> None:
        for item in pending:
            await item


def _log_part_error(func: Callable[..., Any]) -> None:
    log.exception("addon error in %s (the bundle's other parts still run)", getattr(func, "__qualname__", func))


def _routed(part: Any) -> bool:
    return getattr(part, "request_paths", None) is not None


def chain_entry(name: str, entries: Sequence[Any], after_chain: Sequence[Any] = ()) -> Any:
    """One chain entry for `entries` (addons or bundles, called in this order) plus the
    `after_chain` addons or bundles (their response/error deferred to the flow's `update`,
    see the module docstring). Every part stays findable by its addon name, as it was as an
    entry of its own. A single plain addon without after_chain is returned as it is.
    """
    if len(entries) == 1 and not after_chain and not isinstance(entries[0], Bundle):
        return entries[0]
    parts: list[Any] = []
    late: list[Any] = []
    for entry in entries:
        if isinstance(entry, Bundle):  # its parts in their order (visible ones last, as before)
            parts += entry.parts
            late += entry.after_chain
        else:
            parts.append(entry)
    for entry in after_chain:
        if isinstance(entry, Bundle):
            late += [*entry.parts, *entry.after_chain]
        else:
            late.append(entry)
    names = [addon_name(p) for p in (*parts, *late)]
    duplicate = next((n for n in names if names.count(n) > 1 or n == name), None)
    if duplicate is not None:
        raise BundleError(f"chain entry {name!r}: two addons are called {duplicate!r}")
    return Bundle(name, parts, after_chain=late, named=[*parts, *late])
