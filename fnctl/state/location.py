"""Where a project's state lives: a SQLite file (the embedded default) or a PostgreSQL database.

The one place that decides it, from `--state`, then $FNCTL_STATE, then fnctl.toml (`state.url` or
`state.path`), then the per-user default file. A value that starts with `postgresql://` (or `postgres://`)
names a database; `sqlite:PATH` or any other value without a scheme is a path. Pure: nothing here opens
anything.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fnctl.errors import ExitCode, FnctlError
from fnctl.manifest.project import Project

_SCHEMES = ("postgresql://", "postgres://")
_OTHER_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # mysql://…: a URL fnctl cannot open, never a file name
_PASSWORD = re.compile(r"(://[^:/@?#]*:)[^@/?#]*@")  # user:password@ in a URL's authority
_PASSWORD_PARAM = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


class StoreError(FnctlError):
    """The state store cannot be opened or used."""


class BadStoreUrl(StoreError):
    """A state location that names no store fnctl can open (another database's URL, a malformed one)."""

    exit_code = ExitCode.BAD_INPUT


def is_postgres_url(text: str) -> bool:
    return text.startswith(_SCHEMES)


def redact(url: str) -> str:
    """`url` without its password (in the authority or as a parameter): what messages and logs may show."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))


@dataclass(frozen=True)
class StateLocation:
    """A state store: the SQLite file `path`, or with `url` set the PostgreSQL database it names. On
    PostgreSQL `path` is still a host-local anchor beside which the files that belong to this host live (the
    deploy lock, the keys stamp): by default a directory named after the database (never its password)."""

    path: Path
    url: str | None = None

    @property
    def is_postgres(self) -> bool:
        return self.url is not None

    def __str__(self) -> str:
        return redact(self.url) if self.url is not None else str(self.path)

    def to_arg(self) -> str:
        """One string that `parse(...)` turns back into this location (for a child process's argv)."""
        return f"{self.url}#{self.path}" if self.url is not None else str(self.path)


def parse(text: str) -> StateLocation:
    """`--state`'s or $FNCTL_STATE's value: a postgresql:// URL (optionally `#ANCHOR`, the host-local
    anchor path), `sqlite:PATH` (the spelling `fnctl state migrate --from` takes) or a path."""
    if _OTHER_URL.match(text) and not is_postgres_url(text):
        # left as a path, `mysql://x` became a new SQLite file ./mysql:/x
        scheme = text.partition("://")[0]
        raise BadStoreUrl(
            f"unsupported state location {redact(text)!r}: {scheme}:// is not a store fnctl can use "
            "(give a SQLite file path, sqlite:PATH, or a postgresql:// URL)"
        )
    if text.startswith("sqlite:"):
        return StateLocation(Path(text.removeprefix("sqlite:")).expanduser())  # no shell expands ~ there
    if not is_postgres_url(text):
        return StateLocation(Path(text))
    url, _, anchor = text.partition("#")
    return StateLocation(Path(anchor) if anchor else _anchor(url), url)


def default_path(project: str) -> Path:
    """$XDG_STATE_HOME/fnctl/<project>/state.db: per user and project, outside the checkout, so it survives
    both a laptop's `git clean` and a CI runner's fresh clone on the machine that runs the Docker engine."""
    return _state_home() / project / "state.db"


def locate(project: Project, option: StateLocation | None) -> StateLocation:
    """--state, then $FNCTL_STATE, then fnctl.toml's state.url or state.path, then the per-user default."""
    if option is not None:
        return option
    if os.environ.get("FNCTL_STATE"):
        return parse(os.environ["FNCTL_STATE"])
    if project.state_url:
        return StateLocation(_anchor(project.state_url), project.state_url)
    return StateLocation(project.state_path or default_path(project.name))


def _state_home() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fnctl"


def _anchor(url: str) -> Path:
    """The host-local anchor of a database: one per database (named by a digest of the URL without its
    password), so two projects on two databases never share a lock file."""
    digest = hashlib.sha256(redact(url).encode()).hexdigest()[:16]
    return _state_home() / "postgresql" / digest / "state"
