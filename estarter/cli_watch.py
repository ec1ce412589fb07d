"""``estarter run --watch``: run an app folder, and run it again whenever a file of
it changes, until Ctrl-C.

One runtime for the whole loop (an embedded Ray is started once, not per run). A
change is acted on once the folder has settled (estarter.watch.FolderWatch, 300 ms).
The run in progress is then stopped as every stop is (the app is asked, given a
grace, killed with its whole process tree, reaped) and its exit is seen before the
next run starts, so two runs never overlap. If the manifest has a ``build`` command,
it runs before every run (a failed build skips the run and waits for the next
change); what it writes is not a change.

With ``--json`` the loop adds two kinds of event to the app's: ``{"event": "build",
"ok", "code", "seconds", "output"}`` and ``{"event": "watch", "action": "rerun" |
"waiting" | "stopped" | "error", "changed": [...]}`` (``error`` carries ``error``: a
launch or a stop that failed; the loop goes on).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from .errors import EstarterError
from .manifest import load_manifest
from .watch import FolderWatch, run_build

STOP_GRACE = 3.0
EXIT_WAIT = 60.0  # after the kernel's stop returned, the exit event is already due


class WatchLoop:
    def __init__(self, rt: Any, folder: Path, json_out: bool, launch: Callable[[], Any],
                 print_event: Callable[[dict[str, Any], bool], None],
                 out: Console, err: Console) -> None:
        self.rt, self.folder, self.json_out = rt, folder, json_out
        self.launch, self.print_event = launch, print_event
        self.out, self.err = out, err
        self.stop = threading.Event()
        self.watch = FolderWatch(folder)
        self.pending: list[str] | None = None  # a change seen while the app ran

    def say(self, kind: str, text: str, **fields: Any) -> None:
        if self.json_out:
            self.out.print(json.dumps({"event": kind, **fields}), markup=False)
        else:
            self.err.print(f"[watch] {text}", markup=False)

    def run(self) -> int:
        """Until Ctrl-C (or SIGTERM): the run in progress is stopped, then 0."""
        previous = {sig: signal.signal(sig, lambda *_: self.stop.set())
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            changed: list[str] = []
            while not self.stop.is_set():
                if changed:
                    self.say("watch", f"changed: {', '.join(changed[:5])}; running again",
                             action="rerun", changed=changed)
                if self.build():
                    self.watch.rebase()
                    self.run_once()
                if self.stop.is_set():
                    break
                changed = self.wait_for_change()
            self.say("watch", "stopped", action="stopped", changed=[])
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def build(self) -> bool:
        """Run the manifest's build command if it has one; False if the run is off."""
        try:
            command = load_manifest(self.folder).build
        except EstarterError as exc:
            self.say("build", f"manifest: {exc}", ok=False, code=None, seconds=0.0,
                     output=str(exc))
            return False
        if not command:
            return True
        if not self.json_out:
            self.err.print(f"[watch] building: {command}", markup=False)
        result = run_build(self.folder, command, stop=self.stop)
        text = f"build {'ok' if result.ok else 'failed'} ({result.seconds:.1f} s)"
        if not result.ok and result.output:
            text += "\n" + result.output
        self.say("build", text, ok=result.ok, code=result.code,
                 seconds=round(result.seconds, 3), output=result.output)
        return result.ok

    def run_once(self) -> None:
        """Launch, print the app's events, and stop it at a change or Ctrl-C; returns
        once this run has ended (also when it ended on its own and a change came)."""
        cursor = self.rt.event_cursor()
        try:
            handle = self.launch()
        except EstarterError as exc:
            self.say("watch", f"cannot run: {exc}", action="error", changed=[],
                     error=str(exc))
            return
        while True:
            batch = self.rt.events(cursor, 0.2, handle.app_id)
            cursor = batch["next"]
            for event in batch["events"]:
                self.print_event(event, self.json_out)
                if event["event"] == "exit":
                    return
            if self.stop.is_set():
                break
            self.pending = self.watch.poll()
            if self.pending:
                break
        try:
            handle.stop(grace=STOP_GRACE)  # ask, wait, kill the tree, reap
        except EstarterError as exc:  # it ended meanwhile: its exit event says how
            self.say("watch", f"stop: {exc}", action="error", changed=[], error=str(exc))
        self.drain_until_exit(handle.app_id, cursor)

    def drain_until_exit(self, app_id: str, cursor: int) -> None:
        deadline = time.monotonic() + EXIT_WAIT
        while time.monotonic() < deadline:
            batch = self.rt.events(cursor, 1.0, app_id)
            cursor = batch["next"]
            for event in batch["events"]:
                self.print_event(event, self.json_out)
                if event["event"] == "exit":
                    return

    def wait_for_change(self) -> list[str]:
        pending, self.pending = self.pending, None
        if pending:
            return pending
        self.say("watch", "waiting for a change (Ctrl-C ends)", action="waiting", changed=[])
        return self.watch.wait(self.stop) or []
