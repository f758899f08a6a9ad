"""The gateway process: mitmproxy, Portico's addons, the telemetry store and the gRPC API
on one asyncio loop, started and stopped in the right order.

Start: open the store -> build mitmproxy's Master with the pipeline -> listeners up ->
gRPC up. Stop (SIGTERM/SIGINT or `stop()`): stop accepting on every listener -> let
requests in flight finish (bounded by `shutdown_grace`) -> stop mitmproxy -> stop gRPC
(with a grace for calls in flight) -> flush and close the store. The process then exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import options
from mitmproxy.master import Master

from proxy import pipeline
from proxy.config import PorticoConfig, describe
from proxy.schema import ConfigError
from addons.lifecycle import Lifecycle

log = logging.getLogger("portico.server")

VERSION = "0.1.0"
_PLACEHOLDER_UPSTREAM = "http://127.0.0.1:9"  # never dialled: the router picks the real upstream


class StartupError(Exception):
    """The gateway could not start (port in use, store unavailable...); the message says what."""


def mitmproxy_options(config: PorticoConfig) -> options.Options:
    """mitmproxy's options for Portico: reverse listener (+ forward), lazy upstream connections."""
    host, port = config.listen
    modes = [f"reverse:{_PLACEHOLDER_UPSTREAM}@{_fmt_host(host)}:{port}"]
    if config.forward is not None:
        fhost, fport = config.forward.listen
        modes.append(f"regular@{_fmt_host(fhost)}:{fport}")
    opts = options.Options()
    opts.update_defer(
        mode=modes,
        # lazy: nothing is dialled before our request hooks ran (routing, cache hits, refusals)
        connection_strategy="lazy",
        keep_host_header=True,
        # bodies above this are streamed through instead of buffered in memory
        stream_large_bodies="8m",
        ssl_insecure=False,
    )
    return opts


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class Gateway:
    """One running Portico: create, `await start()`, then `await stop()` or `serve_forever()`."""

    config: PorticoConfig
    master: Master | None = None
    store: Any = None
    grpc_server: Any = None
    grpc_port: int | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    services: Any = None
    _master_task: asyncio.Task[None] | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _stopped: bool = False

    # --- start ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, start mitmproxy's listeners and the gRPC server.

        Raises:
            StartupError: a listener could not be bound or the store could not be opened.
        """
        self._check_policy()
        if self.config.telemetry.enabled:
            self.store = await asyncio.to_thread(open_store, self.config)
        try:
            await self._start_master()
            await self._start_grpc()
        except BaseException:
            await self._close_partial()
            raise
        log.info("Portico %s started: %s", VERSION, describe(self.config) | {
            "listen": f"{self.config.listen[0]}:{self.listen_port}", "grpc_port": self.grpc_port})

    def _check_policy(self) -> None:
        from proto.server import check_listen_policy

        try:
            check_listen_policy(grpc_settings(self.config))
        except RuntimeError as e:
            raise StartupError(str(e)) from None

    async def _start_master(self) -> None:
        opts = mitmproxy_options(self.config)
        master = Master(opts)
        master.addons.add(*pipeline.engine_addons())
        services = pipeline.Services(lifecycle=self.lifecycle, store=self.store, version=VERSION)
        master.addons.add(*pipeline.portico_addons(self.config, services))
        self.services = services
        self.master = master
        started = asyncio.get_running_loop().create_future()

        class _Started:
            def running(self) -> None:
                if not started.done():
                    started.set_result(None)

        master.addons.add(_Started())
        self._master_task = asyncio.create_task(master.run(), name="mitmproxy-master")
        done, _ = await asyncio.wait({self._master_task, started}, timeout=15,
                                     return_when=asyncio.FIRST_COMPLETED)
        if started not in done:
            raise StartupError("the proxy did not start within 15 s")
        servers = list(master.addons.get("proxyserver").servers)
        for server in servers:
            if not server.is_running:
                error = getattr(server, "last_exception", None)
                reason = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else str(error)
                which = "forward.listen" if server.mode.type_name == "regular" else "listen"
                raise StartupError(f"{which}: cannot listen on {server.mode.full_spec.split('@')[-1]}: {reason}")

    async def _start_grpc(self) -> None:
        from proto import server as grpc_server_module

        settings = grpc_settings(self.config)
        try:
            cache_store = self.services.cache_store if self.services is not None else None
            server, port, health_servicer = grpc_server_module.create_server(
                settings, self.store, cache_store, outreach_maker=self._outreach_maker())
        except (RuntimeError, ConfigError) as e:
            raise StartupError(str(e)) from None
        await server.start()
        self.grpc_server, self.grpc_port = server, port
        with contextlib.suppress(Exception):
            from grpc_health.v1 import health_pb2

            await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    def _outreach_maker(self) -> Any:
        """Signer for the gRPC Outreach service; None unless the pixel/click endpoints run
        (the pipeline added the Outreach addon), so its URLs always work on this gateway."""
        if self.master is None or self.master.addons.get("outreach") is None:
            return None
        from proxy.tracking_setup import tracked_url_maker

        return tracked_url_maker(self.config, self.public_url)

    # --- introspection ---------------------------------------------------------------------

    @property
    def public_url(self) -> str:
        """`public_url` from the config, else http://<listen host>:<bound port> (wildcard -> 127.0.0.1)."""
        if self.config.public_url:
            return self.config.public_url
        host = self.config.listen[0]
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"http://{_fmt_host(host)}:{self.listen_port}"

    def _listen_addrs(self, kind: str) -> list[tuple[str, int]]:
        assert self.master is not None
        out = []
        for server in self.master.addons.get("proxyserver").servers:
            if server.mode.type_name == kind:
                out.extend(server.listen_addrs)
        return out

    @property
    def listen_port(self) -> int:
        """The reverse listener's bound port (useful with port 0)."""
        return self._listen_addrs("reverse")[0][1]

    @property
    def forward_port(self) -> int | None:
        addrs = self._listen_addrs("regular")
        return addrs[0][1] if addrs else None

    # --- stop ------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Graceful stop: no new connections, finish in-flight requests, close everything."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.shutdown_grace.total_seconds()
        log.info("stopping: no new connections; %d request(s) in flight, grace %.0fs",
                 len(self.lifecycle.in_flight), grace)
        if self.master is not None:
            ps = self.master.addons.get("proxyserver")
            for server in list(ps.servers):
                with contextlib.suppress(Exception):
                    await server.stop()
            if not await self.lifecycle.drained(grace):
                log.warning("stopping: %d request(s) still in flight after %.0fs, closing them",
                            len(self.lifecycle.in_flight), grace)
        await self._close_partial()
        log.info("stopped")
        self._stopping.set()

    async def _close_partial(self) -> None:
        if self.master is not None and self._master_task is not None:
            self.master.shutdown()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._master_task, 10)
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=2)
            self.grpc_server = None
        if self.store is not None:
            store, self.store = self.store, None
            await asyncio.to_thread(store.close)

    async def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda s=sig: asyncio.ensure_future(self._on_signal(s)))
        try:
            await self._stopping.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s", signal.Signals(sig).name)
        await self.stop()


def grpc_settings(config: PorticoConfig) -> Any:
    """proto.server.GrpcSettings from the `grpc:` section."""
    from proto.server import GrpcSettings

    tls = config.grpc.tls
    return GrpcSettings(
        listen=config.grpc.listen,
        tokens_file=config.grpc.tokens_file,
        tls_cert_file=tls.cert_file if tls else None,
        tls_key_file=tls.key_file if tls else None,
        tls_client_ca_file=tls.client_ca_file if tls else None,
    )


def open_store(config: PorticoConfig) -> Any:
    """Open the telemetry store from the `telemetry:` section.

    Raises:
        StartupError: the store could not be opened (path not writable, disk full...).
    """
    from telemetry.errors import TelemetryError
    from telemetry.store import Store, StoreSettings

    t = config.telemetry
    kwargs: dict[str, Any] = {"path": t.path, "partition": t.partition, "retention": dict(t.retention), "sync": t.sync}
    if t.dimensions is not None:
        kwargs["dimensions"] = tuple(t.dimensions)
    try:
        return Store.open(StoreSettings(**kwargs))
    except (TelemetryError, OSError) as e:
        raise StartupError(f"telemetry.path: cannot open the event store at {str(t.path)!r}: {e}") from None


async def run_gateway(config: PorticoConfig) -> int:
    """Start, serve until a signal, stop; the process exit status."""
    gateway = Gateway(config)
    try:
        await gateway.start()
    except (StartupError, ConfigError) as e:
        log.error("cannot start: %s", e)
        raise
    await gateway.serve_forever()
    return 0
