"""Logging set-up: one line per record on stderr, readable text or JSON (`--log-format json`)."""

from __future__ import annotations

import json
import logging
import sys
import time

_MITMPROXY_NOISY = ("mitmproxy", "mitmproxy.proxy.server", "mitmproxy.addons")


class TextFormatter(logging.Formatter):
    """`2026-11-23T12:00:00.123Z INFO portico.router: message` (UTC, millisecond precision)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        text = f"{stamp} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(fmt: str = "text", level: str = "info") -> None:
    """Route every logger (Portico's and mitmproxy's) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # mitmproxy logs every client connect/disconnect at INFO: keep the operator's log readable.
    if level != "debug":
        for name in _MITMPROXY_NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)
