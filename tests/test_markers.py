"""The `docker` marker comes from what a test needs and where it lives (tests/conftest.py): run sessions of
their own, under the same conftest, and see which tests are docker tests and which engine each one finds."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
CONFTEST = (HERE / "conftest.py").read_text(encoding="utf-8")
CONFTEST_IMPORTS = ("runtime_helpers.py", "polling.py", "pgserver.py", "docbackend.py")  # what the conftest imports

TESTS = """
import os

import pytest


@pytest.fixture
def deployed(base_image):  # reaches the engine through another fixture
    return base_image


def test_through_a_fixture(deployed):
    pass


@pytest.mark.docker
def test_marked_by_hand():
    assert os.environ.get("DOCKER_HOST") != NO_ENGINE


def test_plain():
    assert os.environ["DOCKER_HOST"] == NO_ENGINE
"""


@pytest.fixture
def session(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    for name in CONFTEST_IMPORTS:
        (pytester.path / name).write_text((HERE / name).read_text(encoding="utf-8"), encoding="utf-8")
    pytester.makeini("[pytest]\nmarkers =\n    docker: needs a running Docker engine\naddopts = --strict-markers\n")
    header = "NO_ENGINE = " + repr("unix:///nonexistent/fnctl-tests-unmarked-no-engine.sock") + "\n"
    pytester.makepyfile(test_example=header + TESTS)
    folder = pytester.path / "engine" / "docker"  # as tests/<package>/docker/ would be (no __init__.py)
    folder.mkdir(parents=True)
    (folder / "test_in_folder.py").write_text("def test_lives_in_a_docker_folder():\n    pass\n")
    return pytester


def test_engine_fixtures_and_docker_folders_mark_tests_and_hand_marks_still_count(session: pytest.Pytester) -> None:
    result = session.runpytest_subprocess("--collect-only", "-q", "-m", "docker")
    selected = {line.split("::")[-1] for line in result.outlines if "::" in line}
    assert selected == {"test_through_a_fixture", "test_marked_by_hand", "test_lives_in_a_docker_folder"}


def test_an_unmarked_test_finds_no_engine(session: pytest.Pytester) -> None:
    result = session.runpytest_subprocess("-q", "-m", "not docker", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, deselected=3)
