"""Tests that keep the hook tests and the documentation in step with the code.

Every hook in caqe_core/hookspecs.py needs a ``test_hook_<name>`` test under
tests/ and a section of the fixed shape in docs/plugins.md, every method of
the plugin base classes a mention there, and every ``caqe`` command a
mention somewhere in docs/.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from caqe_core import FlowStep, Recruiter, TestType, hookspecs
from caqe_core.cli import build_cli
from caqe_core.plugins import Registry, set_registry

ROOT = Path(__file__).resolve().parents[2]
PLUGINS_DOC = ROOT / "docs" / "plugins.md"
SECTION_PARTS = (
    "**Signature**",
    "**Arguments**",
    "**When it fires**",
    "**Returns**",
    "**Example**",
)


def hook_names() -> list[str]:
    return sorted(
        name
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, "caqe_spec")
    )


def doc_sections() -> dict[str, str]:
    """Return the text of each ``### `name``` section of docs/plugins.md."""
    text = PLUGINS_DOC.read_text()
    parts = re.split(r"(?m)^### `([a-z_]+)`\n", text)
    return {
        parts[index]: re.split(r"(?m)^##? ", parts[index + 1])[0]
        for index in range(1, len(parts) - 1, 2)
    }


def test_hookspecs_found() -> None:
    assert len(hook_names()) >= 10
    assert "participant_finished" in hook_names()


@pytest.mark.parametrize("hook", hook_names())
def test_hook_has_test(hook: str) -> None:
    pattern = re.compile(rf"^\s*def test_hook_{hook}\(", re.MULTILINE)
    found = [
        path
        for path in (ROOT / "tests").rglob("test_*.py")
        if pattern.search(path.read_text())
    ]

    assert found, f"no test named test_hook_{hook} under tests/"


@pytest.mark.parametrize("hook", hook_names())
def test_hook_has_doc_section(hook: str) -> None:
    sections = doc_sections()
    assert hook in sections, f"docs/plugins.md has no section '### `{hook}`'"
    section = sections[hook]

    positions = [section.find(part) for part in SECTION_PARTS]
    assert -1 not in positions, f"the section of {hook} lacks one of {SECTION_PARTS}"
    assert positions == sorted(positions), f"the section of {hook} is out of order"
    parameters = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"def {hook}({parameters})" in section, (
        f"the signature of {hook} in docs/plugins.md is not def {hook}({parameters})"
    )
    for parameter in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert f"- `{parameter}`" in section or f"`{parameter}`," in section, (
            f"the section of {hook} does not describe the argument {parameter!r}"
        )
    assert f"def {hook}(" in section.split("**Example**", 1)[1]


def test_doc_sections_name_real_hooks() -> None:
    stale = sorted(set(doc_sections()) - set(hook_names()))

    assert not stale, f"docs/plugins.md documents hooks that do not exist: {stale}"


@pytest.mark.parametrize(
    "base", [TestType, Recruiter, FlowStep], ids=lambda base: base.__name__
)
def test_base_class_methods_documented(base: type) -> None:
    text = PLUGINS_DOC.read_text()
    heading = re.search(rf"(?m)^## .*`caqe_core\.{base.__name__}`$", text)
    assert heading, f"docs/plugins.md has no section on caqe_core.{base.__name__}"
    section = text[heading.end() :].split("\n## ", 1)[0]
    methods = [
        name
        for name, member in vars(base).items()
        if callable(member) and not name.startswith("_")
    ]

    assert methods
    missing = [name for name in methods if f"`{name}(" not in section]
    assert not missing, (
        f"methods of {base.__name__} missing from docs/plugins.md: {missing}"
    )


def command_paths(group: click.Group, prefix: str = "caqe") -> Iterator[str]:
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            yield from command_paths(command, path)
        else:
            yield path


def command_pattern(path: str) -> re.Pattern[str]:
    """Match ``path`` in text, also with options between its words.

    ``caqe mturk balance`` matches ``caqe mturk --profile lab balance``.
    """
    options = r"(?:\s+--?[\w-]+(?:[ =][^\s-]\S*)?)*"
    words = [re.escape(word) for word in path.split()]
    return re.compile(
        options.join(
            rf"\s+{word}" if index else word for index, word in enumerate(words)
        )
        + r"(?![\w-])"
    )


def test_command_pattern_allows_options() -> None:
    pattern = command_pattern("caqe mturk balance")

    assert pattern.search("$ caqe mturk --profile lab balance\n")
    assert pattern.search("caqe mturk --production balance")
    assert pattern.search("`caqe mturk balance`")
    assert not pattern.search("caqe mturk balances")
    assert not pattern.search("caqe mturk status")


def test_every_command_documented(registry: Registry) -> None:
    set_registry(registry)
    try:
        paths = list(command_paths(build_cli()))
    finally:
        set_registry(None)
    docs = "\n".join(path.read_text() for path in (ROOT / "docs").rglob("*.md"))
    docs += (ROOT / "README.md").read_text()

    assert "caqe run" in paths
    missing = [path for path in paths if not command_pattern(path).search(docs)]
    assert not missing, "commands not mentioned in docs/ or README.md:\n" + "\n".join(
        missing
    )


def test_browser_tests_share_one_driver() -> None:
    """Only tests/conftest.py starts Playwright; a second sync driver cannot start."""
    tests_dir = Path(__file__).resolve().parents[1]
    offenders = [
        str(path.relative_to(tests_dir))
        for path in tests_dir.rglob("*.py")
        if path not in (tests_dir / "conftest.py", Path(__file__).resolve())
        and "sync_playwright(" in path.read_text()
    ]
    assert not offenders, (
        "use the playwright_instance fixture instead of sync_playwright() in: "
        + ", ".join(offenders)
    )
