"""The pure helpers: durations and sizes (fnctl.manifest.units), diagnostics and their rendering, project names."""

from __future__ import annotations

from pathlib import Path

import pytest

from fnctl.manifest.diagnostics import Diagnostic, Position, display_path, json_path, sorted_diagnostics
from fnctl.manifest.project import inside, slug
from fnctl.manifest.units import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("200ms", 0.2),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2h45m30s", 9930.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("0.5ms", 0.0005),
        ("5", 5.0),
        ("0", 0.0),
        ("2.5", 2.5),
        (" 30s ", 30.0),
        (7, 7.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", " ", "5 s", "5sec", "1d", "-5s", "ms", "1.s", ".5s", "s5", "1h-1m", "30S"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .* \(expected e\.g\. 200ms, 30s, 5m, 1h30m\)"):
        parse_duration(text)


@pytest.mark.parametrize("value", [-1, -0.5, True, False])
def test_parse_duration_refuses_negative_numbers_and_booleans(value: float) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    "text, size",
    [
        ("128Mi", 128 * 2**20),
        ("6M", 6_000_000),
        ("1024", 1024),
        ("1.5Gi", 3 * 2**29),
        ("512Ki", 512 * 1024),
        ("1k", 1000),
        ("1K", 1000),
        ("2T", 2 * 10**12),
        ("1Ti", 2**40),
        ("0", 0),
        ("0.5Ki", 512),
        (1024, 1024),
        (0, 0),
        (2.0, 2),
    ],
)
def test_parse_size(text: str | int | float, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "128MB", "1 Mi", "-1", "Mi", "1e3", "12mi", "1.5.5Mi"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid size .* \(expected e\.g\. 512Ki, 128Mi, 1Gi\)"):
        parse_size(text)


@pytest.mark.parametrize("value", [-1, 2.5, -1.0, True])
def test_parse_size_refuses_negative_fractional_and_boolean_numbers(value: float) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(value)


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0ms"),
        (0.25, "250ms"),
        (0.2, "200ms"),
        (0.0005, "0.5ms"),
        (1, "1s"),
        (30, "30s"),
        (59.5, "59.5s"),
        (60, "1m"),
        (61.5, "1m1.5s"),
        (90, "1m30s"),
        (300, "5m"),
        (900, "15m"),
        (3600, "1h"),
        (3601, "1h1s"),
        (3660, "1h1m"),
        (5400, "1h30m"),
        (86400, "24h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    if seconds:
        assert parse_duration(text) == pytest.approx(seconds)  # it reads back


@pytest.mark.parametrize(
    "path, text",
    [
        ((), "$"),
        (("spec", "rollout", "steps", 1, "setWeight"), "$.spec.rollout.steps[1].setWeight"),
        (("spec", "env", "GREETING"), "$.spec.env.GREETING"),
        (("metadata", "labels", "app.kubernetes.io/name"), "$.metadata.labels['app.kubernetes.io/name']"),
        (("spec", "roles", "shop-admin", "invoke", 0), "$.spec.roles.shop-admin.invoke[0]"),
        (("a", "1b", ""), "$.a['1b']['']"),
    ],
)
def test_json_path(path: tuple[str | int, ...], text: str) -> None:
    assert json_path(path) == text


def test_a_diagnostic_renders_as_file_line_column_path_message() -> None:
    diagnostic = Diagnostic(Path("manifests/a.yaml"), Position(3, 7), ("spec", "steps", 1), "bad")
    assert diagnostic.render() == "manifests/a.yaml:3:7: $.spec.steps[1]: bad"
    assert diagnostic.as_json() == {
        "file": "manifests/a.yaml",
        "line": 3,
        "column": 7,
        "path": "$.spec.steps[1]",
        "message": "bad",
    }


def test_a_diagnostic_without_a_place_has_no_line() -> None:
    assert Diagnostic(Path("nowhere"), Position(0, 0), (), "no such file").render() == "nowhere: $: no such file"


def test_display_path_is_relative_below_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert display_path(tmp_path / "manifests" / "a.yaml") == "manifests/a.yaml"
    assert display_path(Path("relative/b.yaml")) == "relative/b.yaml"
    assert display_path(Path("/elsewhere/c.yaml")) == "/elsewhere/c.yaml"


def test_sorted_diagnostics_sorts_by_file_line_column_and_drops_duplicates() -> None:
    a1 = Diagnostic(Path("a.yaml"), Position(1, 5), (), "x")
    a2 = Diagnostic(Path("a.yaml"), Position(10, 1), (), "y")
    b1 = Diagnostic(Path("b.yaml"), Position(2, 1), (), "z")
    assert sorted_diagnostics([b1, a2, a1, a2]) == [a1, a2, b1]


def test_positions_order_like_tuples() -> None:
    assert sorted([Position(2, 1), Position(1, 9), Position(1, 2)]) == [Position(1, 2), Position(1, 9), Position(2, 1)]
    assert Position(3, 4).line == 3 and Position(3, 4).column == 4


@pytest.mark.parametrize(
    "name, expected",
    [
        ("my-project", "my-project"),
        ("My Project", "my-project"),
        ("Café_Ünïcode___", "caf-n-code"),
        ("__x__", "x"),
        ("", "project"),
        ("///", "project"),
        ("a" * 70, "a" * 63),
        ("a" * 62 + "-b", "a" * 62),
    ],
)
def test_slug_is_a_dns_label(name: str, expected: str) -> None:
    assert slug(name) == expected


def test_inside_follows_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "out").symlink_to(tmp_path, target_is_directory=True)
    assert inside(root, root / "sub")
    assert inside(root, root)
    assert not inside(root, root / "out")
    assert not inside(root, root / ".." / "elsewhere")
