"""The store's lock as a waiting command sees it: it says at once whom it waits for (pid, command, since),
keeps showing that it waits, and gives the timeout error when --lock-timeout passes.

The lock is held from this test process (`lock.held`), the waiting command is the real CLI in a subprocess
whose stderr is read while it waits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest
from deploy_helpers import cleanup, make_project
from pgserver import StateFactory
from polling import wait_until

from fnctl.deploy import lock
from fnctl.deploy.lock import Holder, waiting_words
from fnctl.state.location import StateLocation

HOLDER_COMMAND = "fnctl apply (held by the test)"


def test_waiting_words_name_the_holder() -> None:
    since = time.mktime((2026, 1, 2, 10, 4, 5, 0, 0, -1))
    words = waiting_words(Holder(42, "ci-1", "fnctl apply", since), since + 12, local_host="ci-1")
    assert words == "waiting for the lock held by pid 42 (`fnctl apply`, since 10:04:05, 12s ago)"
    assert "on ci-2" in waiting_words(Holder(42, "ci-2", "fnctl apply", since), since, local_host="ci-1")
    assert waiting_words(Holder(), since) == "waiting for the lock held by another fnctl command"


def test_on_wait_is_told_the_holder_at_once_and_its_display_ends_with_the_wait(tmp_path: Path) -> None:
    store = tmp_path / "state.db"
    shown: list[Holder] = []
    ended = threading.Event()
    got = threading.Event()

    @contextmanager
    def display(holder: Holder) -> Iterator[None]:
        shown.append(holder)
        try:
            yield
        finally:
            ended.set()

    def waiter() -> None:
        with lock.held(StateLocation(store), timeout=30, command="waiter", on_wait=display):
            got.set()

    with lock.held(StateLocation(store), timeout=1, command=HOLDER_COMMAND):
        thread = threading.Thread(target=waiter)
        thread.start()
        wait_until(lambda: shown, what="the waiter to be told whom it waits for")
        assert shown[0].pid == os.getpid() and shown[0].command == HOLDER_COMMAND and shown[0].since
        assert not got.is_set() and not ended.is_set()  # still waiting, its display still up
    thread.join(timeout=30)
    assert got.is_set() and ended.is_set() and len(shown) == 1


def test_no_display_when_the_lock_is_free(tmp_path: Path) -> None:
    shown: list[Holder] = []

    @contextmanager
    def display(holder: Holder) -> Iterator[None]:
        shown.append(holder)
        yield

    with lock.held(StateLocation(tmp_path / "state.db"), timeout=1, on_wait=display):
        pass
    assert shown == []


def _project(root: Path) -> tuple[Path, dict[str, str]]:
    (root / "manifests").mkdir(parents=True)
    (root / "fnctl.toml").write_text('[project]\nname = "locktest"\nmanifests = ["manifests"]\n', encoding="utf-8")
    state = root.parent / "state" / "state.db"
    return state, os.environ | {"FNCTL_STATE": str(state), "COLUMNS": "200", "NO_COLOR": "1"}


def test_a_lock_timeout_still_gives_the_timeout_error_after_saying_whom_it_waited_for(tmp_path: Path) -> None:
    state, env = _project(tmp_path / "project")
    with lock.held(StateLocation(state), timeout=1, command=HOLDER_COMMAND):
        done = subprocess.run(
            [sys.executable, "-m", "fnctl", "apply", "--lock-timeout", "1"],
            cwd=tmp_path / "project",
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    waiting = next(i for i, line in enumerate(lines) if "waiting for the lock held by" in line)
    assert f"pid {os.getpid()}" in lines[waiting] and HOLDER_COMMAND in lines[waiting]
    assert "up to 1s" in lines[waiting]
    timed_out = next(i for i, line in enumerate(lines) if "the state store is locked by" in line)
    assert timed_out > waiting and "waited 1s" in lines[timed_out] and "--lock-timeout" in lines[timed_out]
    assert "Traceback" not in done.stderr


@pytest.mark.docker
def test_a_second_apply_says_at_once_whom_it_waits_for_then_goes_on(
    tmp_path: Path, docker_client: docker.DockerClient, base_image: str, project_states: StateFactory
) -> None:
    project = make_project(tmp_path / "project", docker_client, base_image, project_states)
    project.function("hello")
    err = tmp_path / "apply.err"
    try:
        with lock.held(project.location, timeout=1, command=HOLDER_COMMAND):
            with err.open("w") as stream:
                waiting = subprocess.Popen(
                    [sys.executable, "-m", "fnctl", "apply", "--lock-timeout", "120"],
                    cwd=project.root,
                    env=project.environ(),
                    stdout=subprocess.PIPE,
                    stderr=stream,
                    text=True,
                )
            try:
                line = wait_until(
                    lambda: next((l for l in err.read_text().splitlines() if "waiting for the lock" in l), None),
                    what="the second apply to say whom it waits for",
                    timeout=60,
                )
                assert f"pid {os.getpid()}" in line and f"`{HOLDER_COMMAND}`" in line and "since " in line, line
                assert waiting.poll() is None, "the second apply must still be waiting"
            except BaseException:
                waiting.kill()
                raise
        out, _ = waiting.communicate(timeout=300)
        assert waiting.returncode == 0, err.read_text()
        assert "locked by" not in err.read_text() and "hello" in out
    finally:
        cleanup(project)


def test_on_postgresql_commands_on_two_hosts_exclude_each_other_through_the_database(
    tmp_path: Path, pg_url: str
) -> None:
    """Two hosts: the same database, each its own host-local lock file (its anchor)."""
    here, there = StateLocation(tmp_path / "a" / "state", pg_url), StateLocation(tmp_path / "b" / "state", pg_url)
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock.held(here, timeout=5, command="fnctl apply (host a)"):
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(30)
        with pytest.raises(lock.LockTimeout, match="on another host"), lock.held(there, timeout=0.3):
            pass
        with lock.attempt(there) as got:
            assert got is False
    finally:
        release.set()
        holder.join(30)
    with lock.held(there, timeout=5):  # released with its holder's session
        with lock.attempt(here) as got:
            assert got is False
