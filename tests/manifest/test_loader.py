"""The safe YAML loader (fnctl.manifest.loader): plain values with positions, and a clear diagnostic for bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fnctl.manifest import loader
from fnctl.manifest.diagnostics import Position
from fnctl.manifest.files import Document, find_manifest_files
from fnctl.manifest.loader import load_file


def load(tmp_path: Path, text: str | bytes, name: str = "m.yaml") -> tuple[list[Document], list[str]]:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    documents, problems = load_file(path)
    return documents, [p.render().removeprefix(f"{path}:") for p in problems]


def data(tmp_path: Path, text: str) -> list[Any]:
    documents, problems = load(tmp_path, text)
    assert problems == []
    return [d.data for d in documents]


# --- values ---------------------------------------------------------------------------------------------------


def test_plain_values_with_the_position_of_each(tmp_path: Path) -> None:
    documents, _ = load(tmp_path, "a: 1\nb:\n  - x\n  - {c: true, d: null}\n")
    (document,) = documents
    assert document.data == {"a": 1, "b": ["x", {"c": True, "d": None}]}
    assert document.positions[()] == Position(1, 1)
    assert document.positions[("a",)] == Position(1, 4)
    assert document.positions[("b", 0)] == Position(3, 5)
    assert document.positions[("b", 1, "d")] == Position(4, 18)


def test_the_position_of_a_missing_path_is_its_nearest_ancestor(tmp_path: Path) -> None:
    (document,), _ = load(tmp_path, "spec:\n  limits: {cpu: 1}\n")
    assert document.position(("spec", "limits", "memory")) == Position(2, 11)
    assert document.position(("nothing", "here")) == Position(1, 1)


def test_the_core_scalars(tmp_path: Path) -> None:
    text = (
        "- 12\n- 0x1F\n- 1.5\n- .5\n- 1_000\n- true\n- on\n- ~\n- ''\n- '12'\n- 2024-01-01\n- 1.5e3\n- ! 7\n- !!str 7\n"
    )
    assert data(tmp_path, text) == [[12, 31, 1.5, 0.5, 1000, True, True, None, "", "12", "2024-01-01", "1.5e3", 7, "7"]]


def test_keys_are_kept_as_written(tmp_path: Path) -> None:
    """YAML 1.1 reads the key `on` (of a data trigger) as a boolean; fnctl keeps every key as its text."""
    assert data(tmp_path, "on: {event: beforeCreate}\n1: a\nyes: b\nnull: c\n") == [
        {"on": {"event": "beforeCreate"}, "1": "a", "yes": "b", "null": "c"}
    ]


def test_several_documents_and_empty_ones(tmp_path: Path) -> None:
    documents, problems = load(tmp_path, "---\na: 1\n---\n---\nb: 2\n...\n---\n~\n---\n")
    assert problems == []
    assert [(d.index, d.data) for d in documents] == [(0, {"a": 1}), (2, {"b": 2}), (3, None)]


def test_aliases_share_their_value(tmp_path: Path) -> None:
    (document,), _ = load(tmp_path, "base: &b {x: [1, 2]}\nuse: *b\nlist: [*b]\n")
    assert document.data["use"] is document.data["base"] is document.data["list"][0]
    assert document.positions[("use", "x", 1)] == document.positions[("base", "x", 1)] == Position(1, 18)


def test_merge_keys(tmp_path: Path) -> None:
    text = "a: &a {x: 1, y: {z: 2}}\nb: &b {x: 3, w: 4}\nc:\n  k: 0\n  <<: [*a, *b]\n  x: 9\n"
    (document,), _ = load(tmp_path, text)
    assert document.data["c"] == {"k": 0, "x": 9, "y": {"z": 2}, "w": 4}  # own keys win, then earlier sources
    assert document.positions[("c",)] == Position(4, 3)
    assert document.positions[("c", "x")] == Position(6, 6)
    assert document.positions[("c", "y", "z")] == Position(1, 21)  # where the merged value is written
    assert document.positions[("c", "w")] == Position(2, 17)
    assert not any(any(not isinstance(part, (str, int)) for part in path) for path in document.positions)


def test_what_it_loads_is_what_pyyaml_loads(tmp_path: Path) -> None:
    text = (
        "a: &x {p: 1, q: [1, 2.5, {r: s}]}\nb: *x\nc: [*x, *x]\nd:\n  <<: *x\n  p: 2\ne: |\n  block\nf: >\n  folded\n"
    )
    assert data(tmp_path, text) == [yaml.safe_load(text)]


# --- refused -------------------------------------------------------------------------------------------------

TAG = "is not allowed: manifests may only use plain mappings, lists, strings, numbers, booleans and null"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("a: !!python/object/apply:os.system [echo hi]\n", f"1:4: $.a: YAML tag !!python/object/apply:os.system {TAG}"),
        ("a: !!python/name:os.system\n", f"1:4: $.a: YAML tag !!python/name:os.system {TAG}"),
        ("a: !!python/object:builtins.dict {x: 1}\n", f"1:4: $.a: YAML tag !!python/object:builtins.dict {TAG}"),
        ("a: !!binary aGVsbG8=\n", f"1:4: $.a: YAML tag !!binary {TAG}"),
        ("a: !!set {x}\n", f"1:4: $.a: YAML tag !!set {TAG}"),
        ("a: !!omap [x: 1]\n", f"1:4: $.a: YAML tag !!omap {TAG}"),
        ("a: !custom x\n", f"1:4: $.a: YAML tag !custom {TAG}"),
        ("!!python/object:os.system\na: 1\n", f"1:1: $: YAML tag !!python/object:os.system {TAG}"),
        ("a: <<\n", f"1:4: $.a: YAML tag !!merge {TAG}"),
    ],
)
def test_only_the_core_tags_are_accepted(tmp_path: Path, problem: str, text: str) -> None:
    assert load(tmp_path, text) == ([], [problem])


@pytest.mark.parametrize(
    "text, problem",
    [
        ("a: 1\nb: 2\na: 3\n", "3:1: $.a: duplicate key 'a' (YAML would silently keep only the last one)"),
        (
            "c: {<<: {a: 1, a: 2}}\n",
            "1:16: $.c['<<'].a: duplicate key 'a' (YAML would silently keep only the last one)",
        ),
        ("? [a]\n: 1\n", "1:3: $: mapping keys must be plain strings"),
        ("a: &k x\n*k : 1\n", "2:1: $: mapping keys must be plain strings"),
        ("k: !!binary aGk=\n!!binary aGk=: 1\n", f"1:4: $.k: YAML tag !!binary {TAG}"),
        ("a: !!bool maybe\n", "1:4: $.a: invalid scalar 'maybe': it is not a valid !!bool"),
        ("a: !!int abc\n", "1:4: $.a: invalid scalar 'abc': it is not a valid !!int"),
        ("a: " + "9" * 5000 + "\n", "1:4: $.a: invalid scalar '" + "9" * 56 + "...: it has too many digits"),
        ("a: .nan\n", "1:4: $.a: '.nan' is not allowed: numbers must be finite (JSON has no NaN or infinity)"),
        ("a: [-.Inf]\n", "1:5: $.a[0]: '-.Inf' is not allowed: numbers must be finite (JSON has no NaN or infinity)"),
        ("c: {<<: 1}\n", "1:9: $.c: a merge key (<<) needs a mapping or a list of mappings"),
        ("a: *nope\n", "1:4: $: invalid YAML: found undefined alias 'nope'"),
        ("a: &a [*a]\n", "1:8: $.a[0]: alias *a refers to a value that contains it"),
        ("a: &a 1\nb: &a 2\n", "2:4: $.b: duplicate anchor 'a'"),
        ("a: {b: 1\nc: 2\n", "2:2: $: invalid YAML: while parsing a flow mapping did not find expected ',' or '}'"),
        (
            "a:\n\t- 1\n",
            "2:1: $: invalid YAML: while scanning for the next token found character that cannot start any token",
        ),
        ("a: 1\n b: 2\n", "2:3: $: invalid YAML: mapping values are not allowed in this context"),
    ],
)
def test_bad_input_gets_its_own_message(tmp_path: Path, text: str, problem: str) -> None:
    assert load(tmp_path, text)[1] == [problem]


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "1:1: $: file is empty: expected at least one manifest document"),
        (b"\n\n  \n", "1:1: $: file is empty: expected at least one manifest document"),
        (b"# only a comment\n---\n...\n", "1:1: $: file is empty: expected at least one manifest document"),
        (b"---\n---\n", "1:1: $: file is empty: expected at least one manifest document"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "1:1: $: file is binary, not YAML text"),
        (b"a: \xff\xfe\n", "1:1: $: file is not UTF-8 text (byte 3)"),
    ],
)
def test_files_that_are_not_manifests(tmp_path: Path, content: bytes, problem: str) -> None:
    assert load(tmp_path, content) == ([], [problem])


def test_a_byte_order_mark_is_fine(tmp_path: Path) -> None:
    assert data(tmp_path, "\ufeffa: 1\n") == [{"a": 1}]


def test_the_file_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_FILE_BYTES", 10)
    assert load(tmp_path, "a: 1234567890\n") == ([], ["1:1: $: file is too large (14 bytes; the limit is 10)"])


def test_the_document_limit_keeps_the_documents_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_DOCUMENTS", 3)
    documents, problems = load(tmp_path, "a: 1\n---\nb: 2\n---\nc: 3\n---\nd: 4\n")
    assert [d.data for d in documents] == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert problems == ["1:1: $: too many documents (the limit is 3)"]


def test_nesting_up_to_the_limit(tmp_path: Path) -> None:
    assert data(tmp_path, "[" * 200 + "]" * 200)[0] is not None
    assert load(tmp_path, "[" * 201 + "]" * 201)[1] == ["1:201: $: document is nested too deeply (over 200 levels)"]


def test_a_nested_alias_bomb_is_refused_at_the_alias_that_crosses_the_budget(tmp_path: Path) -> None:
    text = (
        "a: &a ["
        + ",".join(["x"] * 100)
        + "]\n"
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 100) + "]\n" for i in range(3))
    )
    documents, problems = load(tmp_path, text)
    assert documents == []
    assert problems == [
        "3:62: $.c[18]: aliases expand to more than 200000 values (an alias bomb?); write the values "
        "out or use fewer aliases"
    ]


# --- finding manifest files ------------------------------------------------------------------------------------


def test_find_manifest_files(tmp_path: Path) -> None:
    for name in ["b.yaml", "a.yml", "sub/c.yaml", "sub/deeper/d.yaml", ".hidden/e.yaml", "notes.txt", "sub/f.json"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a: 1\n")
    explicit = tmp_path / "notes.txt"
    files, problems = find_manifest_files([tmp_path, explicit, tmp_path / "missing"])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "a.yml",
        "b.yaml",
        "notes.txt",
        "sub/c.yaml",
        "sub/deeper/d.yaml",
    ]
    assert [p.render() for p in problems] == [
        f"{tmp_path / 'missing'}: $: no such file or directory: {tmp_path / 'missing'}"
    ]


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    dangling = tmp_path / "gone.yaml"
    dangling.symlink_to(tmp_path / "nowhere.yaml")
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    assert [p.render() for p in load_file(dangling)[1]] == [
        f"{dangling}:1:1: $: cannot read file: No such file or directory"
    ]
    assert [p.render() for p in load_file(directory)[1]] == [f"{directory}:1:1: $: not a regular file"]


# --- fuzzing: whatever the bytes, a diagnostic or the values PyYAML reads -----------------------------------------

_FEATURES = """\
base: &base {x: 1, y: [a, b, {z: c}]}
use: *base
merged:
  <<: [*base, {w: 2}]
  x: 3
list: [1, 2.5, 'q', "dq", null, true]
block: |
  text
"""


def _comparable(value: Any) -> bool:
    """PyYAML's reading, where fnctl deliberately differs in none of the ways documented (keys, dates)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _comparable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_comparable(v) for v in value)
    return isinstance(value, (str, int, float, bool)) or value is None


def test_fuzzed_input_never_raises_and_reads_like_pyyaml(tmp_path: Path) -> None:
    import random

    repo = Path(__file__).resolve().parents[2]
    corpus = [p.read_text() for p in sorted((repo / "manifests").rglob("*.yaml"))] + [_FEATURES]
    rng = random.Random(7)
    compared = 0
    for n in range(800):
        text = list(rng.choice(corpus))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(text))
            if rng.random() < 0.5:
                text.insert(i, rng.choice("-:[]{}&*!<>#'\"\n ,?|\t~%@`\\0123abc"))
            else:
                del text[i]
        mutated = "".join(text)
        documents, problems = load(tmp_path, mutated, name=f"f{n}.yaml")  # must not raise
        if problems:
            continue
        try:
            expected = list(yaml.load_all(mutated, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
        except yaml.YAMLError:
            continue  # e.g. a duplicate anchor PyYAML refuses where fnctl does too, in another way
        for document in documents:
            if _comparable(expected[document.index]):
                assert document.data == expected[document.index], mutated
                compared += 1
    assert compared > 200


def test_the_fast_path_reads_what_the_full_builder_reads(tmp_path: Path) -> None:
    """Plain files skip the full builder (and their positions until asked for): same values, same positions."""
    import random

    from fnctl.manifest.yamlbuild import Builder, Parser

    repo = Path(__file__).resolve().parents[2]
    corpus = [p.read_text() for p in sorted((repo / "manifests").rglob("*.yaml"))]
    rng = random.Random(11)
    fast = 0
    for n in range(600):
        text = list(rng.choice(corpus))
        for _ in range(rng.randint(0, 3)):
            text.insert(rng.randrange(len(text)), rng.choice("-:[]{}'\"\n ,?#0123ab~"))
        mutated = "".join(text)
        plain = loader._read_plain(mutated, loader.MAX_DOCUMENTS)
        if plain is None:
            continue
        fast += 1
        builder, parser = Builder(loader.MAX_DOCUMENTS), Parser(mutated)
        builder.run(parser)  # must not raise where the fast path did not
        parser.dispose()
        assert plain == [(b.number, b.data) for b in builder.documents], mutated
        documents, problems = load(tmp_path, mutated, name=f"f{n}.yaml")
        assert problems == []
        assert [d.positions for d in documents] == [
            {p: Position(m.line + 1, m.column + 1) for p, m in b.marks.items()} for b in builder.documents
        ]
    assert fast > 200


def test_the_fast_path_leaves_every_refusal_to_the_full_builder(tmp_path: Path) -> None:
    for text in [
        "a: 1\na: 2\n",
        "a: !!str 1\n",
        "a: &x 1\nb: *x\n",
        "<<: {a: 1}\n",
        "a: .nan\n",
        "a: =\n",
        "x\n",
        "[" * 201 + "]" * 201,
        "~\n",
        "? [a]\n: 1\n",
        "a: 1\n a: 2\n",
    ]:
        assert loader._read_plain(text, loader.MAX_DOCUMENTS) is None, text
    assert loader._read_plain("a: 1\n---\nb: 2\n", 1) is None
    assert loader._read_plain("---\na: 1\n---\n---\nb: 2\n...\n---\n", 9) == [(0, {"a": 1}), (2, {"b": 2})]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    assert [p.render() for p in load_file(fifo)[1]] == [f"{fifo}:1:1: $: not a regular file"]
