"""The `portico` console script as a user runs it: real subprocesses, real signals."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.harness import EchoUpstream

PORTICO = [sys.executable, "-m", "proxy.cli"]
ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PORTICO, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_check_config_accepts_a_good_file(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("routes: [{upstream: 'http://127.0.0.1:9000'}]\n")
    result = run_cli("check-config", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_config_rejects_a_bad_file_with_one_line_and_status_2(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("routes: [{upstream: 'http://127.0.0.1:9000', strip_prefx: true}]\n")
    result = run_cli("check-config", str(cfg))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"portico: {cfg}: routes[0].strip_prefx: unknown key; did you mean 'strip_prefix'?"
    )


def test_run_with_bad_config_exits_2_before_listening(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("listen: 127.0.0.1:notaport\n")
    result = run_cli("run", "--config", str(cfg))
    assert result.returncode == 2
    assert "listen: expected an address" in result.stderr and "Traceback" not in result.stderr


def test_unknown_subcommand_is_a_usage_error():
    result = run_cli("frobnicate")
    assert result.returncode == 2


_PENDING: dict[int, bytes] = {}
"""Bytes read from each process's stdout but not yet consumed as lines (by pid)."""


def _wait_for_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 30) -> re.Match[str]:
    """The first line of `proc`'s stdout matching `pattern`, reading the pipe's fd directly:
    a buffered readline() can pull several lines in at once, after which select() never
    reports the ones already buffered."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = _PENDING.pop(proc.pid, b"")
    while time.monotonic() < deadline:
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = raw.decode("utf-8", "replace")
            seen.append(line + "\n")
            if m := re.search(pattern, line):
                _PENDING[proc.pid] = buffer
                return m
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
    proc.kill()
    raise AssertionError(f"never saw {pattern!r}; output: {''.join(seen)[-2000:]}")


def test_run_serves_and_exits_0_on_sigterm(tmp_path):
    upstream = EchoUpstream("svc")
    cfg = tmp_path / "portico.yaml"
    cfg.write_text(f"""
listen: 127.0.0.1:0
grpc: {{listen: 127.0.0.1:0}}
telemetry: {{path: {json.dumps(str(tmp_path / 'data'))}}}
routes: [{{upstream: '{upstream.url}'}}]
""")
    proc = subprocess.Popen([*PORTICO, "run", "--config", str(cfg), "--log-format", "json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        m = _wait_for_line(proc, r"'listen': '127\.0\.0\.1:(\d+)'")
        port = int(m.group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=5) as resp:
            assert json.loads(resp.read())["path"] == "/hello"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert any(entry["message"] == "stopped" for entry in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
        upstream.close()


def test_demo_serves_a_page_through_the_gateway(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([*PORTICO, "demo", "--port", "0", "--grpc-port", "0", "--data", str(tmp_path / "demo")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        m = _wait_for_line(proc, r"Open:\s+(http://127\.0\.0\.1:\d+)/")
        base = m.group(1)
        with urllib.request.urlopen(base + "/about", timeout=5) as resp:
            page = resp.read().decode()
        assert resp.status == 200 and "Demo org" in page
        _wait_for_line(proc, r"GET /about\s+-> 200 .*cache: portico; hit")  # a newcomer sees a cache hit
        m = _wait_for_line(proc, r"(\d+) events recorded so far")  # ... and events in the store
        assert int(m.group(1)) >= 6
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0


def test_settle_gc_freezes_start_up_objects_and_raises_the_young_threshold():
    code = ("import gc; from proxy.cli_gateway import settle_gc, GC_GEN0; import mitmproxy.http; "
            "settle_gc(); print(gc.get_threshold()[0] == GC_GEN0, gc.get_freeze_count() > 10_000)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True"], out.stderr
