"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ended by
a NUL byte on file descriptors 3 and 4), so no websocket library is needed. Networking is off: every host resolves
to nothing and every request goes to a closed proxy port.

    with Browser() as b:
        page = b.open(path)   # loads the file; page.problems: console errors, uncaught exceptions, failed loads
        page.evaluate("document.title"); page.screenshot()
"""
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
TIMEOUT = 60  # seconds for any one answer: a page of a few MB loads in a few seconds on a loaded 2-core machine


def find() -> str | None:
    return next((path for path in map(shutil.which, NAMES) if path), None)


class Browser:
    def __init__(self, binary: str | None = None, width: int = 1280, height: int = 900):
        self.binary, self.size = binary or find(), (width, height)
        self.buffer, self.events, self.next_id = b"", [], 0

    def __enter__(self):
        commands_r, self.commands = os.pipe()
        self.answers, answers_w = os.pipe()
        self.profile = tempfile.TemporaryDirectory()

        def on_3_and_4():  # in the child: the pipe ends at 3 and 4, whatever numbers they had (via 10 and up)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_r, answers_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--hide-scrollbars", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-sync",
             "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
             f"--user-data-dir={self.profile.name}", f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            preexec_fn=on_3_and_4, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_r)
        os.close(answers_w)
        return self

    def __exit__(self, *exc):
        try:
            self.call("Browser.close")
        except (OSError, TimeoutError, RuntimeError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.commands)
        os.close(self.answers)
        self.profile.cleanup()

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        answer = self.wait(lambda m, i=self.next_id: m.get("id") == i)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    def wait(self, until) -> dict:
        """The first message that `until` accepts; the messages before it are kept in `events`."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                message = json.loads(raw)
                if until(message):
                    return message
                self.events.append(message)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.answers], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.answers, 1 << 20)
            if not chunk:
                raise OSError("Chromium closed its pipe")
            self.buffer += chunk

    def open(self, path) -> "Page":
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session)
        start = len(self.events)
        self.call("Page.navigate", {"url": f"file://{os.path.abspath(path)}"}, session)

        def loaded(m):
            return m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session
        if not any(map(loaded, self.events[start:])):  # it may come before navigate's answer
            self.events.append(self.wait(loaded))
        return Page(self, session, start)


class Page:
    def __init__(self, browser: Browser, session: str, start: int):
        self.browser, self.session, self.start = browser, session, start

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (DevTools runs it whatever the page's own policy)."""
        result = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                   self.session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        """The whole page (beyond the window) as PNG."""
        shot = self.browser.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                                 self.session)
        return base64.b64decode(shot["data"])

    @property
    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and failed loads (a blocked request included) since the
        page was opened."""
        out = []
        for m in self.browser.events[self.start:]:
            p, method = m.get("params", {}), m.get("method")
            if m.get("sessionId") != self.session:
                continue
            if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                out.append(f"console.{p['type']}: " + " ".join(str(a.get("value")) for a in p.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(f"{d.get('text')} {d.get('exception', {}).get('description', '')}".strip())
            elif method == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                e = p["entry"]
                out.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}".strip())
        return out
