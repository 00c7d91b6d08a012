"""CLI commands for the replay area (registered by focus.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the ``focus`` CLI."""
