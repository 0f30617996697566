"""package.json and package-lock.json read without npm (pure): the lock in step with package.json, and npm's
version ranges for engines.node."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from fnctl.toolchain.packages import PackageFiles, package_problems
from fnctl.toolchain.semver import satisfies

NODE = (22, 23, 5)


@pytest.mark.parametrize(
    ("range_text", "admitted"),
    [
        (">=18", True),
        (">=24", False),
        ("^22", True),
        ("^22.24", False),
        ("^20 || ^22", True),
        ("20.x", False),
        ("22.x", True),
        (">=20 <23", True),
        (">= 20 < 22", False),
        ("18 - 20", False),
        ("20 - 22", True),
        ("~22.23.0", True),
        ("~22.22", False),
        ("*", True),
        ("<22", False),
        ("<=22", True),
        (">22", False),
        (">22.1", True),
        (">=v22.0.0-rc.1", True),
        ("^0.1", False),
    ],
)
def test_engines_ranges(range_text: str, admitted: bool) -> None:
    assert satisfies(NODE, range_text) is admitted


def test_an_unreadable_range_is_a_problem_not_a_guess() -> None:
    assert satisfies(NODE, "node 22 please") is None
    files = PackageFiles(Path("/f"), json.dumps({"engines": {"node": "latest LTS"}}), None)
    assert [p.message for p in package_problems(files, NODE)] == [
        "engines.node 'latest LTS' is not a version range npm reads"
    ]


def _files(package: Mapping[str, object], root: Mapping[str, object] | None, version: int = 3) -> PackageFiles:
    lock = None if root is None else json.dumps({"lockfileVersion": version, "packages": {"": root}}, indent=2)
    return PackageFiles(Path("/f"), json.dumps(package, indent=2), lock)


def test_a_lock_in_step_has_no_problem() -> None:
    deps = {"dependencies": {"a": "^1.0.0"}, "devDependencies": {"b": "2.0.0"}}
    assert package_problems(_files(deps, deps), NODE) == []
    assert package_problems(_files({"name": "no-deps"}, None), NODE) == []


def test_every_difference_with_the_lock_is_named_at_its_key() -> None:
    package = {"dependencies": {"a": "^1.1.0", "new": "1.0.0"}, "devDependencies": {"b": "2.0.0"}}
    root = {"dependencies": {"a": "^1.0.0", "gone": "3.0.0"}, "devDependencies": {"b": "2.0.0"}}
    rendered = [p.render() for p in package_problems(_files(package, root), NODE)]
    assert rendered == [
        "/f/package.json:3:5: package-lock.json is out of date with package.json: dependencies.a is '^1.1.0' in "
        "package.json but '^1.0.0' in the lock; run `npm install`",
        "/f/package.json:2:3: package-lock.json is out of date with package.json: package-lock.json still lists "
        "dependencies.gone, which package.json no longer does; run `npm install`",
        "/f/package.json:4:5: package-lock.json is out of date with package.json: dependencies.new is not in "
        "package-lock.json; run `npm install`",
    ]


def test_an_npm6_lock_and_broken_json_are_refused() -> None:
    old = package_problems(_files({"dependencies": {"a": "1.0.0"}}, {}, version=1), NODE)
    assert [p.message for p in old] == [
        "package-lock.json is in the format of npm 6 or older: regenerate it with `npm install` (npm 7 or newer)"
    ]
    broken = package_problems(PackageFiles(Path("/f"), '{\n  "name": "x",\n}', None), NODE)
    assert [(p.line, p.column, p.message) for p in broken] == [
        (3, 1, "not valid JSON: Expecting property name enclosed in double quotes")
    ]


def test_a_dependency_from_a_path_outside_the_source_is_refused() -> None:
    package = {"dependencies": {"inside": "file:vendor/x.tgz", "outside": "file:../../secrets", "home": "~/lib"}}
    files = PackageFiles(Path("/p/functions/f"), json.dumps(package, indent=2), None)
    messages = [p.message for p in package_problems(files, NODE)]
    assert messages[:2] == [
        "dependencies.home: '~/lib' lies outside the function's source directory, and only that directory goes "
        "into the image",
        "dependencies.outside: 'file:../../secrets' lies outside the function's source directory, and only that "
        "directory goes into the image",
    ]
    assert len(messages) == 3 and "no package-lock.json" in messages[2]
