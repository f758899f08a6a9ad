"""A tiny Chrome DevTools Protocol client for tests: start Debian's headless chromium, drive one page.

No downloads: uses /usr/bin/chromium (Debian package `chromium`). The DevTools port is
read from `DevToolsActivePort` in the throw-away profile directory (`--remote-debugging-port=0`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    def __init__(self, profile: Path, user_agent: str) -> None:
        exe = chromium_path()
        assert exe, "chromium is not installed (apt-get install chromium)"
        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", f"--user-agent={user_agent}",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as resp:  # noqa: S310
            targets = json.load(resp)
        self.ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Page:
    """One page target over a websocket: `call(method, **params)`, `wait_event(name)`."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
            elif "method" in msg:
                await self.events.put(msg)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[msg_id] = fut
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, 15)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def wait_event(self, name: str, timeout: float = 15) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            msg = await asyncio.wait_for(self.events.get(), max(left, 0.01))
            if msg["method"] == name:
                return msg

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    async def navigate(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired")

    async def click(self, selector: str) -> None:
        """A real mouse click (Input events) in the middle of the element."""
        box = await self.evaluate(
            f"(() => {{const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            "return [r.left + r.width / 2, r.top + r.height / 2]})()")
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()


async def open_page(browser: Browser) -> Page:
    ws = await websockets.connect(browser.ws_url, max_size=None)
    page = Page(ws)
    await page.call("Page.enable")
    await page.call("Runtime.enable")
    return page
