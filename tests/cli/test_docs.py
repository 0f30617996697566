"""What a new user reads: every command's --help has a summary and an example and the docs describe the command;
the README's first commands are the ones CI runs; every link in README.md and docs/ leads to a file that exists.

The commands are found by walking the whole command line, so a command added without an example or a mention
in docs/ fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fnctl.cli.app import PARTS, app

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted((REPO / "docs").glob("*.md"))
runner = CliRunner()


def _commands(command: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every visible command and group under `command`, as (its words after `fnctl`, the click command)."""
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if not getattr(sub, "hidden", False):  # hidden: internal (what an installed git hook runs)
            found += _commands(sub, (*path, name))
    return found


COMMANDS = dict(_commands(typer.main.get_group(app)))


def test_the_walk_finds_every_top_level_command() -> None:
    assert {path[0] for path in COMMANDS if path} == {name for names in PARTS.values() for name in names}
    assert {("serve",), ("state", "migrate"), ("data", "find"), ("view", "get"), ("run",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda path: " ".join(path) or "fnctl")
def test_every_command_has_a_summary_and_an_example_in_its_help(path: tuple[str, ...]) -> None:
    summary = (getattr(COMMANDS[path], "help", None) or "").strip().split("\n\n")[0]
    assert summary, f"`fnctl {' '.join(path)}` has no summary line"
    shown = runner.invoke(app, [*path, "--help"])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.stdout.split())  # the help is wrapped to the terminal's width
    assert re.search(r"\bExamples?:", text), f"`fnctl {' '.join(path)} --help` shows no example"
    assert f"fnctl {' '.join(path)}".strip() in text.split("Example", 1)[1], "the example does not run the command"


@pytest.mark.parametrize("path", sorted(p for p in COMMANDS if p), ids=" ".join)
def test_every_command_is_described_in_docs(path: tuple[str, ...]) -> None:
    # `fnctl data find …` in prose or an example, or `data find …` in a table of commands
    mention = re.compile(rf"(fnctl |`){re.escape(' '.join(path))}(?![\w-])")
    assert any(mention.search(doc.read_text(encoding="utf-8")) for doc in DOCS), f"no docs/*.md mentions {path}"


# Options every command shares, described once (README "State", docs/ci.md): not looked for per command.
SHARED_OPTIONS = {"--help", "--state", "--output", "--lock-timeout", "--version", "--debug"}


@pytest.mark.parametrize("path", sorted(p for p in COMMANDS if p), ids=" ".join)
def test_every_option_is_described_in_the_readme_or_docs(path: tuple[str, ...]) -> None:
    text = "\n".join(page.read_text(encoding="utf-8") for page in [REPO / "README.md", *DOCS])
    undescribed = []
    for param in getattr(COMMANDS[path], "params", []):
        names = [o for o in [*param.opts, *getattr(param, "secondary_opts", [])] if o.startswith("--")]
        if names and not getattr(param, "hidden", False) and not SHARED_OPTIONS & set(names):
            if not any(re.search(rf"{re.escape(name)}(?![\w-])", text) for name in names):
                undescribed.append(names[0])
    assert undescribed == [], f"`fnctl {' '.join(path)}`: no README or docs/*.md mentions {undescribed}"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#+\s+(.+)$", page.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", [REPO / "README.md", *DOCS], ids=lambda page: page.name)
def test_every_link_leads_to_a_file_and_heading_that_exist(page: Path) -> None:
    links = [t for t in LINK.findall(page.read_text(encoding="utf-8")) if not re.match(r"[a-z]+:", t)]  # http(s):
    broken = []
    for link in links:
        file, _, anchor = link.partition("#")
        target = page.parent / file if file else page
        if not target.exists() or (anchor and target.suffix == ".md" and anchor not in _anchors(target)):
            broken.append(link)
    assert broken == []


def test_the_readmes_first_two_commands_are_the_demo_and_what_ci_runs() -> None:
    first = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.DOTALL)
    assert first is not None
    commands = [line.split("#", 1)[0].strip() for line in first.group(1).splitlines()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "bash scripts/test.sh" in ci and (REPO / "scripts" / "demo.sh").is_file()
