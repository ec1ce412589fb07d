"""A ``python`` app's own dependencies: its ``requirements.txt``, installed by pip into
a folder of its own, never into estarter's environment.

The requirements come from an untrusted package, so only plain requirement lines
are accepted (``name[extras] <specifiers> ; marker``): no options (``-e``,
``--index-url``, ``-r``), no URLs, no paths. pip installs wheels only
(``--only-binary :all:``), so nothing of the package runs at install time, and
the app runs with ``-S``, so no ``.pth`` file runs at start either. The folder is
keyed by the requirements' hash (apps asking for the same set share it) and is
complete or absent (installed into a temporary folder, then renamed). The sandbox
binds it read-only at ``/estarter-deps``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import LaunchError, PackageError

REQUIREMENTS = "requirements.txt"
MAX_REQUIREMENTS_BYTES = 64 * 1024
MAX_REQUIREMENTS = 200
PIP_TIMEOUT_SECONDS = 900.0
COMPLETE = ".estarter-complete"

# A PEP 508 requirement without a URL: name, optional extras, version specifiers
# and an environment marker after ';'.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_LINE = re.compile(
    rf"^{_NAME}\s*(?:\[\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\])?"
    r"\s*(?:(?:===|==|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+"
    r"(?:\s*,\s*(?:===|==|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+)*)?"
    r"\s*(?:;[^@]*)?$"
)


def parse(text: str, source: str = REQUIREMENTS) -> list[str]:
    """The requirement lines, validated; PackageError names the first bad line."""
    if len(text.encode()) > MAX_REQUIREMENTS_BYTES:
        raise PackageError(f"{source}: larger than {MAX_REQUIREMENTS_BYTES} bytes")
    out: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise PackageError(f"{source}:{number}: options are not allowed ({line.split()[0]})")
        if "://" in line or "@" in line or "/" in line or "\\" in line or not _LINE.match(line):
            raise PackageError(f"{source}:{number}: not a plain requirement (name, version "
                               f"specifiers, marker; no URLs or paths): {line[:80]!r}")
        out.append(line)
        if len(out) > MAX_REQUIREMENTS:
            raise PackageError(f"{source}: more than {MAX_REQUIREMENTS} requirements")
    return out


def read(app_dir: Path) -> str | None:
    """The app folder's requirements text, or None."""
    path = app_dir / REQUIREMENTS
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_REQUIREMENTS_BYTES:
        raise PackageError(f"{REQUIREMENTS}: larger than {MAX_REQUIREMENTS_BYTES} bytes")
    return path.read_text(encoding="utf-8", errors="replace")


def read_source(source: Path) -> str | None:
    """The requirements of an app folder or package (read before it is installed)."""
    if source.is_dir():
        return read(source)
    try:
        with zipfile.ZipFile(source) as zf:
            try:
                info = zf.getinfo(REQUIREMENTS)
            except KeyError:
                return None
            if info.file_size > MAX_REQUIREMENTS_BYTES:
                raise PackageError(f"{REQUIREMENTS}: larger than {MAX_REQUIREMENTS_BYTES} bytes")
            return zf.read(info).decode("utf-8", errors="replace")
    except (OSError, zipfile.BadZipFile):
        return None  # the store's own checks say what is wrong with the package


def folder(home: Path, lines: list[str]) -> Path:
    digest = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:20]
    return home / "deps" / digest


def pip_command() -> list[str]:
    """pip of the interpreter estarter runs on (the same Python version as the apps)."""
    return [sys.executable, "-m", "pip"]


def ensure(home: Path, text: str | None, *, pip_args: tuple[str, ...] = (),
           timeout: float = PIP_TIMEOUT_SECONDS) -> Path | None:
    """The installed dependencies folder for ``text`` (installing it if needed), or
    None when there is nothing to install. Raises PackageError for bad requirements
    and LaunchError, with pip's last words, when pip is missing or fails."""
    if text is None:
        return None
    lines = parse(text)
    if not lines:
        return None
    target = folder(home, lines)
    if (target / COMPLETE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".install-", dir=target.parent))
    try:
        _pip_install(lines, tmp, pip_args, timeout)
        (tmp / COMPLETE).write_text("\n".join(lines) + "\n")
        tmp.chmod(0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / COMPLETE).exists():  # not a concurrent install of the same set
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _pip_install(lines: list[str], target: Path, pip_args: tuple[str, ...],
                 timeout: float) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(lines) + "\n")
        reqs = fh.name
    argv = [*pip_command(), "install", "--quiet", "--no-input", "--disable-pip-version-check",
            "--only-binary", ":all:", "--no-warn-script-location", "--target", str(target),
            *pip_args, "-r", reqs]
    try:
        r = subprocess.run(argv, capture_output=True, timeout=timeout, check=False,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"cannot install the app's requirements: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(reqs)
    if r.returncode != 0:
        words = (r.stderr or r.stdout).decode(errors="replace").strip().splitlines()
        if any("No module named pip" in w for w in words):
            raise LaunchError("cannot install the app's requirements: pip is not available")
        last = next((w for w in reversed(words) if w.strip()), "pip failed")
        raise LaunchError(f"cannot install the app's requirements: {last.strip()[:300]}")
