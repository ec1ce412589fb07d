"""The SDK's import cost is paid by every app launch (issue 15, target 3): it imports
neither ``typing`` nor the other modules it used to pull in only for annotations or
conveniences (``contextlib``, ``queue``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sdk_import_pulls_in_no_typing() -> None:
    # -I -S as the python hosting runs apps: no site, so nothing else imports typing.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import sdk; "
            "from sdk import EStarterClient, transports; "
            "import json; print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT)],
                          capture_output=True, text=True, timeout=60, check=True)
    loaded = set(json.loads(done.stdout))
    assert "sdk.client" in loaded
    assert not loaded & {"typing", "contextlib", "queue"}, sorted(
        loaded & {"typing", "contextlib", "queue"})

