"""Open a page in headless Chromium and report what a person would see: a small DevTools-protocol client.

Talks to Chromium over --remote-debugging-pipe (JSON messages separated by NUL bytes on fds 3 and 4), so no
websocket library and no network port are needed. Test helper only.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

__all__ = ["find_chromium", "open_page"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _high(fd: int) -> int:
    import fcntl

    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class _Pipe:
    def __init__(self, binary: str, profile: str):
        cmd_r, self._cmd_w = os.pipe()  # we write commands, Chromium reads them on fd 3
        self._evt_r, evt_w = os.pipe()  # Chromium writes replies and events on fd 4, we read them
        cmd_r, evt_w = (_high(fd) for fd in (cmd_r, evt_w))  # never 3 or 4 themselves, so the shell can move them there
        args = [
            "--headless",
            "--remote-debugging-pipe",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        shell = f'exec "$0" "$@" 3<&{cmd_r} 4>&{evt_w} {cmd_r}<&- {evt_w}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", shell, binary, *args],
            pass_fds=(cmd_r, evt_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(cmd_r)
        os.close(evt_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0) -> dict:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self._next:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        for e in self.events:
            if e.get("method") == method:
                return e
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            self.events.append(m)
            if m.get("method") == method:
                return m

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            r, _, _ = select.select([self._evt_r], [], [], left)
            if r:
                chunk = os.read(self._evt_r, 1 << 20)
                if not chunk:
                    raise RuntimeError(
                        "Chromium closed the DevTools pipe: "
                        + (self.proc.stderr.read() or b"").decode(errors="replace")[-2000:]
                    )
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            os.write(self._cmd_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            for fd in (self._cmd_w, self._evt_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self.proc.stderr:
                self.proc.stderr.close()


def open_page(binary: str, url: str, *, width: int = 1280, height: int = 900) -> dict:
    """Load ``url``, then return {"png": full-page screenshot bytes, "size": (w, h) CSS px of the page,
    "images": [{src, complete, width, height}], "console_errors": [...], "requests": [urls], "dialogs": [...]}."""
    with tempfile.TemporaryDirectory(prefix="octbatch-chromium-") as profile:
        b = _Pipe(binary, profile)
        try:
            target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                b.send(f"{domain}.enable", session=s)
            b.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=s,
            )
            b.events.clear()
            b.send("Page.navigate", {"url": url}, session=s)
            b.wait_event("Page.loadEventFired")
            images = b.send(
                "Runtime.evaluate",
                {
                    "returnByValue": True,
                    "expression": "Array.from(document.images).map(i => ({src: i.getAttribute('src').slice(0, 30), complete: i.complete, "
                    "width: i.naturalWidth, height: i.naturalHeight}))",
                },
                session=s,
            )["result"]["value"]
            scripts = b.send(
                "Runtime.evaluate", {"returnByValue": True, "expression": "document.scripts.length"}, session=s
            )["result"]["value"]
            metrics = b.send("Page.getLayoutMetrics", session=s)
            size = metrics["cssContentSize"]
            w, h = int(size["width"]), int(size["height"])
            shot = b.send(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1},
                },
                session=s,
            )
            errors, requests, dialogs = [], [], []
            for e in b.events:
                m, p = e.get("method"), e.get("params", {})
                if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                    errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
                elif m == "Runtime.exceptionThrown":
                    errors.append(p.get("exceptionDetails", {}).get("text", "exception"))
                elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                    errors.append(p["entry"].get("text", ""))
                elif m == "Network.requestWillBeSent":
                    requests.append(p["request"]["url"])
                elif m == "Page.javascriptDialogOpening":
                    dialogs.append(p.get("message"))
            return {
                "png": base64.b64decode(shot["data"]),
                "size": (w, h),
                "images": images,
                "scripts": scripts,
                "console_errors": errors,
                "requests": requests,
                "dialogs": dialogs,
            }
        finally:
            b.close()
