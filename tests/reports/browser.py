"""A minimal headless-Chromium driver over the DevTools protocol on a pipe (`--remote-debugging-pipe`).

No websocket or Playwright package is needed: Chromium reads JSON commands from fd 3 and writes
replies and events to fd 4, each message ending with a NUL byte. Only what the report tests need:
open a page with the network switched off, collect console errors and every request, evaluate a
script, take a screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    # Belt and braces for "network unavailable": no name resolves, and the page is also set offline.
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


def find_chromium() -> str | None:
    """$PEFTPLAN_CHROMIUM (a path, or 'none' to act as if absent), else chromium on PATH or /usr/bin."""
    chosen = os.environ.get("PEFTPLAN_CHROMIUM")
    if chosen:
        return None if chosen == "none" else chosen
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@dataclass
class PageLog:
    """What happened while a page loaded."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, failed loads


class Chromium:
    """One headless browser; use as a context manager."""

    def __init__(self, binary: str, profile_dir: Path, *, width: int = 1366, height: int = 800) -> None:
        self.width, self.height = width, height
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        # Keep the child's ends above 4, so wiring them onto fds 3 and 4 cannot clobber one another.
        cmd_r, out_w = self._above_four(cmd_r), self._above_four(out_w)

        def wire_pipes() -> None:  # in the child: commands on fd 3, replies on fd 4
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        profile_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = profile_dir.parent / f"{profile_dir.name}.stderr.log"
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile_dir}", "--remote-debugging-pipe",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            preexec_fn=wire_pipes, pass_fds=(3, 4),
        )
        os.close(cmd_r)
        os.close(out_w)
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    @staticmethod
    def _above_four(fd: int) -> int:
        import fcntl

        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
        os.close(fd)
        return high

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._out_r, "rb", buffering=0) as stream:
            while True:
                chunk = stream.read(65536)
                if not chunk:
                    return
                buffer += chunk
                while b"\0" in buffer:
                    raw, buffer = buffer.split(b"\0", 1)
                    message = json.loads(raw)
                    if "id" in message:
                        with self._cond:
                            self._replies[message["id"]] = message
                            self._cond.notify_all()
                    else:
                        self._events.put(message)

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._next_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"chromium did not answer {method} (exit code {self.proc.poll()})")
                self._cond.wait(left)
            reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    def open(self, url: str, log: PageLog, *, timeout: float = 60.0) -> str:
        """Open `url` in a new tab with the network offline; returns the session id once loaded."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1,
                                                       "uploadThroughput": -1}, session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False}, session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        deadline = time.monotonic() + timeout
        while True:
            event = self._events.get(timeout=max(0.1, deadline - time.monotonic()))
            self._record(event, session, log)
            if event.get("sessionId") == session and event["method"] == "Page.loadEventFired":
                return session

    def drain(self, session: str, log: PageLog, settle: float = 0.3) -> None:
        """Record the events that arrived after load (late console errors, lazy requests)."""
        time.sleep(settle)
        while True:
            try:
                self._record(self._events.get_nowait(), session, log)
            except queue.Empty:
                return

    @staticmethod
    def _record(event: dict[str, Any], session: str, log: PageLog) -> None:
        if event.get("sessionId") != session:
            return
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            log.requests.append(params["request"]["url"])
        elif method == "Network.loadingFailed":
            log.errors.append(f"load failed: {params.get('errorText')} {params.get('blockedReason', '')}".strip())
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            log.errors.append(f"exception: {details.get('exception', {}).get('description', details.get('text'))}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            log.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            log.errors.append(f"log: {params['entry']['text']} {params['entry'].get('url', '')}".strip())

    def evaluate(self, session: str, expression: str) -> Any:
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                               "awaitPromise": True}, session=session)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"script failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def screenshot(self, session: str, path: Path) -> Path:
        """A full-page PNG at the emulated width."""
        size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": self.width, "height": min(int(size["height"]), 16000), "scale": 1}
        data = self.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True},
                         session=session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def __enter__(self) -> Chromium:
        self.send("Target.getTargets", timeout=60.0)  # waits until the browser is up
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.send("Browser.close", timeout=5.0)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        self._stderr.close()
