"""The operator's configuration of apps: values for the variables a manifest's ``env``
declares, injected into the app's environment at launch.

Layout under ``$ESTARTER_HOME``::

    config/                  0700
    config/<id>.json         plain values, {"NAME": "value"}  (0600)
    config/<id>.secrets.json secret values                   (0600 from its creation)

Guarantees: a name the installed manifest does not declare is refused; values are
bounded (``manifest.MAX_ENV_VALUE_BYTES`` each, ``MAX_ENV_TOTAL_BYTES`` together)
and hold no NUL; a secret's value is never returned by :meth:`AppConfig.entries`
or :meth:`AppConfig.get` (they say that it is set), only by :meth:`env_for`, which
is what launch reads. Writes are atomic (a temporary file created 0600, fsync,
rename) and serialised by one ``flock`` per home. Files only: works with or
without a runtime up; a change reaches the app at its next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InvalidParams
from .manifest import MAX_ENV_TOTAL_BYTES, AppManifest, check_env_name, check_env_value

_APP_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
FILE_MODE = 0o600
DIR_MODE = 0o700


class AppConfig:
    """The configuration of every app of one home."""

    def __init__(self, home: Path) -> None:
        self.dir = Path(home) / "config"

    # -- queries ---------------------------------------------------------------

    def entries(self, manifest: AppManifest) -> list[dict[str, Any]]:
        """One row per declared variable: name, description, secret, whether it is set,
        its value (never a secret's), its default and where the app's value comes
        from (``set``, ``default`` or ``unset``); then names stored for the app that
        its manifest no longer declares (``undeclared``: not given to the app)."""
        plain, hidden = self._read(manifest.id, False), self._read(manifest.id, True)
        rows = []
        declared = manifest.declared_env()
        for name, var in declared.items():
            is_set = name in hidden or name in plain
            source = "set" if is_set else "default" if var.default is not None else "unset"
            shown = None if (var.secret or name in hidden) else plain.get(name, var.default)
            rows.append({"name": name, "description": var.description,
                         "secret": var.secret or name in hidden, "set": is_set,
                         "value": shown, "default": var.default, "source": source})
        for name in sorted((set(plain) | set(hidden)) - set(declared)):
            rows.append({"name": name, "description": "", "secret": name in hidden,
                         "set": True, "value": None if name in hidden else plain[name],
                         "default": None, "source": "undeclared"})
        return rows

    def get(self, manifest: AppManifest, name: str) -> dict[str, Any]:
        """The row of one declared variable (see :meth:`entries`)."""
        self._declared(manifest, name)
        return next(row for row in self.entries(manifest) if row["name"] == name)

    def env_for(self, manifest: AppManifest) -> dict[str, str]:
        """What the app gets: each declared variable's value, else its default.
        Stored values of names the manifest no longer declares are left out."""
        plain, hidden = self._read(manifest.id, False), self._read(manifest.id, True)
        env: dict[str, str] = {}
        for name, var in manifest.declared_env().items():
            value = hidden.get(name, plain.get(name, var.default))
            if value is not None:
                env[name] = value
        return env

    # -- changes ---------------------------------------------------------------

    def set(self, manifest: AppManifest, name: str, value: str,
            secret: bool = False) -> dict[str, Any]:
        """Store a value; a secret (``secret`` or declared so) goes to the 0600 secrets
        file and leaves the plain one. Raises InvalidParams (undeclared name, a value
        too long or with NUL, the app's values over the total)."""
        var = self._declared(manifest, name)
        try:
            check_env_value(name, value)
        except ValueError as exc:
            raise InvalidParams(str(exc), {"name": name}) from None
        secret = secret or var.secret
        with self._locked():
            plain, hidden = self._read(manifest.id, False), self._read(manifest.id, True)
            (hidden if secret else plain)[name] = value
            (plain if secret else hidden).pop(name, None)
            total = sum(len(k) + len(v.encode()) + 2 for k, v in {**plain, **hidden}.items())
            if total > MAX_ENV_TOTAL_BYTES:
                raise InvalidParams(f"{manifest.id}: its configuration would take more than "
                                    f"{MAX_ENV_TOTAL_BYTES} bytes", {"name": name})
            self._write(manifest.id, False, plain)
            self._write(manifest.id, True, hidden)
        return {"appId": manifest.id, "name": name, "secret": secret, "set": True}

    def unset(self, app_id: str, name: str) -> bool:
        """Forget a stored value (the default applies again); True if there was one."""
        with self._locked():
            plain, hidden = self._read(app_id, False), self._read(app_id, True)
            found = plain.pop(name, None) is not None
            found = hidden.pop(name, None) is not None or found
            if found:
                self._write(app_id, False, plain)
                self._write(app_id, True, hidden)
        return found

    def forget(self, app_id: str) -> None:
        """Remove every stored value of the app (on uninstall)."""
        with self._locked():
            for secret in (False, True):
                with contextlib.suppress(FileNotFoundError):
                    self._path(app_id, secret).unlink()

    # -- internals ---------------------------------------------------------------

    def _declared(self, manifest: AppManifest, name: str) -> Any:
        try:
            check_env_name(name)
        except ValueError as exc:
            raise InvalidParams(str(exc), {"name": name}) from None
        declared = manifest.declared_env()
        if name not in declared:
            known = ", ".join(declared) or "none"
            raise InvalidParams(f"{manifest.id} does not declare {name} in its manifest's "
                                f"env (it declares: {known})", {"name": name})
        return declared[name]

    def _path(self, app_id: str, secret: bool) -> Path:
        if not _APP_ID.match(app_id):
            raise InvalidParams(f"{app_id!r} is not a valid app id", {"appId": app_id})
        return self.dir / f"{app_id}{'.secrets' if secret else ''}.json"

    def _read(self, app_id: str, secret: bool) -> dict[str, str]:
        try:
            data = json.loads(self._path(app_id, secret).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Never echo the file: it may hold secrets.
            raise InvalidParams(f"{self._path(app_id, secret)}: unreadable "
                                f"({type(exc).__name__})") from None
        if not isinstance(data, dict):
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def _write(self, app_id: str, secret: bool, values: dict[str, str]) -> None:
        path = self._path(app_id, secret)
        if not values:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        tmp = self.dir / f".{path.name}.{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(values, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, FILE_MODE)  # whatever the umask did
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.dir, DIR_MODE)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


__all__ = ["AppConfig"]
