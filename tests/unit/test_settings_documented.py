"""Every setting a process reads is documented where its users look: the README's settings
table, or the API's in docs/api.md (which the README links)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from focus_sessions.api.settings import ApiSettings
from focus_sessions.settings import CommonSettings, ProjectorSettings

ROOT = Path(__file__).resolve().parents[2]


def documented(path: Path) -> set[str]:
    """Variable names in the first column of a Markdown table."""
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", path.read_text(), re.MULTILINE))


@pytest.mark.parametrize(("settings", "where"), [
    (CommonSettings, ("README.md",)),
    (ProjectorSettings, ("README.md",)),
    (ApiSettings, ("README.md", "docs/api.md")),
], ids=["common", "projector", "api"])
def test_every_setting_is_in_a_settings_table(
    settings: type[BaseSettings], where: tuple[str, ...],
) -> None:
    names = {name.upper() for name in settings.model_fields}
    tables = set().union(*(documented(ROOT / w) for w in where))
    assert sorted(names - tables) == []


def test_the_tables_name_no_setting_that_does_not_exist() -> None:
    known = {n.upper() for s in (ProjectorSettings, ApiSettings) for n in s.model_fields}
    assert sorted(documented(ROOT / "README.md") - known) == []
