"""The state's PostgreSQL opener whole (`fnctl.state.backends.PostgresOpener`): the deployment state's backend
and lock (`pgbackend`) and the document store's connection and change feed (`docpg`), all of psycopg. A
long-running program (`fnctl serve`, the audit writer, the tests) installs it as it is; the CLI's commands
install a stand-in that imports this module the first time a PostgreSQL location is opened."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from fnctl.state import docpg, pgbackend, pgsession
from fnctl.state.backends import Backend, LeaderLock, Listener, install_postgres
from fnctl.state.docconn import DocConn, Feed


class _PsycopgOpener:
    def open_state(self, url: str, anchor: Path) -> Backend:
        return pgbackend.open_postgres(url, anchor)

    def deploy_lock(self, url: str, timeout: float | None) -> AbstractContextManager[bool]:
        return pgbackend.advisory_lock(url, timeout)

    def open_documents(self, url: str) -> DocConn:
        return docpg.open_store(url)

    def documents_exist(self, url: str) -> bool:
        return docpg.schema_exists(url)

    def change_feed(self, url: str) -> Feed:
        return docpg.ChangeFeed(url)

    def leader_lock(self, url: str) -> LeaderLock:
        return pgsession.AdvisoryLeaderLock(url)

    def listen(self, url: str, channel: str) -> Listener:
        return pgsession.NotifyListener(url, channel)


OPENER = _PsycopgOpener()


def install() -> None:
    install_postgres(OPENER)
