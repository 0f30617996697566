"""The state's PostgreSQL opener (`fnctl.state.backends.PostgresOpener`) as the CLI hands it in: a stand-in that
imports psycopg (`fnctl.state.pgopener`) the first time a command opens a PostgreSQL location, so a command on a
SQLite state never pays its ~0.18 s of CPU (measured)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import cache
from pathlib import Path

from fnctl.state.backends import Backend, LeaderLock, Listener, PostgresOpener, install_postgres
from fnctl.state.docconn import DocConn, Feed


@cache
def _whole() -> PostgresOpener:
    # Start-up time: psycopg costs ~0.18 s of CPU to import, for a state on PostgreSQL only.
    from fnctl.state.pgopener import OPENER

    return OPENER


class _OpenerOnFirstUse:
    def open_state(self, url: str, anchor: Path) -> Backend:
        return _whole().open_state(url, anchor)

    def deploy_lock(self, url: str, timeout: float | None) -> AbstractContextManager[bool]:
        return _whole().deploy_lock(url, timeout)

    def open_documents(self, url: str) -> DocConn:
        return _whole().open_documents(url)

    def documents_exist(self, url: str) -> bool:
        return _whole().documents_exist(url)

    def change_feed(self, url: str) -> Feed:
        return _whole().change_feed(url)

    def leader_lock(self, url: str) -> LeaderLock:
        return _whole().leader_lock(url)

    def listen(self, url: str, channel: str) -> Listener:
        return _whole().listen(url, channel)


def install_on_first_use() -> None:
    install_postgres(_OpenerOnFirstUse())


def install_now() -> None:
    """For a long-running command (`fnctl serve`): the import is paid at start, not by a request."""
    # Imported when the command runs (start-up time, as above): serve opens its state at once.
    from fnctl.state.pgopener import OPENER

    install_postgres(OPENER)
