"""A minimal client for QEMU's machine protocol (QMP) over a Unix socket.

QMP is line-delimited JSON: a greeting, then ``qmp_capabilities``, then commands answered by
``return`` or ``error``, with asynchronous ``event`` messages interleaved anywhere.
"""

from __future__ import annotations

import json
import socket
import time
from collections import deque
from pathlib import Path


class QmpError(Exception):
    """QEMU answered a command with an error, or the connection broke."""


class Qmp:
    def __init__(self, path: Path, timeout: float = 10) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except OSError:
            self._sock.close()
            raise
        self._buffer = b""
        self._events: deque[dict] = deque()
        self._timeout = timeout
        self._read(timeout)  # the greeting
        self.execute("qmp_capabilities")

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def execute(self, command: str, **arguments) -> object:
        message = {"execute": command, **({"arguments": arguments} if arguments else {})}
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        deadline = time.monotonic() + self._timeout
        while True:
            reply = self._read(max(deadline - time.monotonic(), 0.01))
            if reply is None:
                raise QmpError(f"QEMU did not answer {command!r} in time")
            if "event" in reply:
                self._events.append(reply)
            elif "error" in reply:
                error = reply["error"]
                raise QmpError(f"{command}: {error.get('desc', error)}")
            elif "return" in reply:
                return reply["return"]

    def wait_for_migration(self, what: str, timeout: float) -> None:
        """Block until the migration in either direction completes; QmpError if it fails or
        takes longer than ``timeout`` seconds (``what`` names it in the error)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.execute("query-migrate")
            state = status.get("status")  # absent until an incoming stream starts
            if state == "completed":
                return
            if state in ("failed", "cancelled"):
                raise QmpError(f"{what} failed: {status.get('error-desc', state)}")
            if time.monotonic() > deadline:
                raise QmpError(f"{what} took over {timeout:.0f} s (status {state!r})")
            time.sleep(0.05)

    def hmp(self, command: str) -> str:
        """A human-monitor command (``info registers -a``), through QMP."""
        return str(self.execute("human-monitor-command", **{"command-line": command}))

    def event(self, timeout: float) -> dict | None:
        """The next asynchronous event, or None if none arrives within ``timeout``."""
        if self._events:
            return self._events.popleft()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self._read(left)
            if message is None:
                return None
            if "event" in message:
                return message
        return None

    def _read(self, timeout: float) -> dict | None:
        """One JSON message, None on timeout; QmpError once QEMU has closed the socket."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as error:
                raise QmpError(f"the QMP connection broke: {error}") from error
            if not chunk:
                raise QmpError("QEMU closed the QMP connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)
