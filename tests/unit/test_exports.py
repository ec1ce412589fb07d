"""The public surface is on purpose: what each package exports is what the README
documents, and the SDK and the core import nothing they must not."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import estarter
import sdk

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def names_imported_in_readme(package: str) -> set[str]:
    found: set[str] = set()
    for match in re.finditer(rf"^from {package} import ([\w, ]+)$", README, re.MULTILINE):
        found |= {name.strip() for name in match.group(1).split(",")}
    return found


def test_estarter_exports() -> None:
    assert set(estarter.__all__) == {"AppHandle", "EstarterError", "ExitInfo", "ExitReason",
                                     "Runtime", "__version__"}
    for name in estarter.__all__:
        assert getattr(estarter, name) is not None


def test_sdk_exports_every_error_class() -> None:
    assert {"EStarterClient", "connect", "ApiError", "PermissionDeniedError"} <= set(sdk.__all__)
    for name in sdk.__all__:
        obj = getattr(sdk, name)
        if name.endswith("Error"):
            assert issubclass(obj, sdk.ApiError) or obj is sdk.ApiError


def test_readme_imports_only_exported_names() -> None:
    used_core = names_imported_in_readme("estarter")
    used_sdk = names_imported_in_readme("sdk")
    assert used_core and used_sdk, "the README shows how to import both"
    assert used_core <= set(estarter.__all__)
    assert used_sdk <= set(sdk.__all__)


def test_core_imports_no_ray_and_sdk_only_stdlib() -> None:
    code = (
        "import sys, estarter, estarter.manifest, estarter.policy, estarter.kernel.core, "
        "estarter.supervision, estarter.hosting.process_host; "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"
