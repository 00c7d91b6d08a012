"""``focus migrate``: versioned SQL applied once, in order, under an advisory lock."""

from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from typer.testing import CliRunner, Result

import focus_sessions.migrate
from focus_sessions.cli import app
from focus_sessions.migrate import Migration, MigrationError, available, migrate
from focus_sessions.servers import write_state
from focus_sessions.settings import CommonSettings

#: `focus migrate` never talks to the broker; the address only has to be set.
UNUSED_BROKER = "127.0.0.1:9"


def history(url: str, schema: str = "public") -> list[tuple[int, str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            f'SELECT version, name, checksum FROM "{schema}".schema_migrations ORDER BY version'
        ).fetchall()


def tables(url: str, schema: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema]
        ).fetchall()
    return {name for (name,) in rows}


def listing(migrations: list[Migration]) -> str:
    return ", ".join(f"{m.version:04d}_{m.name}" for m in migrations)


def focus_migrate(monkeypatch: pytest.MonkeyPatch, data_dir: Path, **env: str) -> Result:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FOCUS_DATA_DIR", str(data_dir))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(app, ["migrate"])


@pytest.fixture
def fake_migrations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A folder that stands in for the ``migrations`` package."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "README.md").write_text("not a migration")
    monkeypatch.setattr(
        focus_sessions.migrate, "resources", SimpleNamespace(files=lambda _: folder))
    return folder


# --- the command ------------------------------------------------------------------------------


def test_focus_migrate_applies_every_shipped_migration_then_finds_none_pending(
    fresh_database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shipped = available()
    env = {"DATABASE_URL": fresh_database, "KAFKA_BOOTSTRAP_SERVERS": UNUSED_BROKER}

    first = focus_migrate(monkeypatch, tmp_path, **env)
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == f"applied {len(shipped)} migration(s): {listing(shipped)}"
    assert history(fresh_database) == [(m.version, m.name, m.checksum) for m in shipped]
    assert {"focus_sessions", "focus_user_stats", "projector_positions"} <= tables(
        fresh_database, "public")

    again = focus_migrate(monkeypatch, tmp_path, **env)
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == "applied 0 migration(s): none pending"


def test_focus_migrate_uses_the_database_of_a_running_focus_dev(
    fresh_database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_state(CommonSettings(focus_data_dir=tmp_path), UNUSED_BROKER, fresh_database)
    result = focus_migrate(monkeypatch, tmp_path)
    assert result.exit_code == 0, result.output
    assert [v for v, _, _ in history(fresh_database)] == [m.version for m in available()]


# --- the rules ----------------------------------------------------------------------------------


def test_an_applied_migration_whose_file_changed_stops_migrate(fresh_database: str) -> None:
    migrate(fresh_database)
    first = available()[0]
    # what the database remembers no longer matches the file: as if someone edited it
    with psycopg.connect(fresh_database) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = %s WHERE version = %s",
                     ["0" * 64, first.version])

    with pytest.raises(MigrationError) as raised:
        migrate(fresh_database)
    assert str(raised.value) == (
        f"migration {first.version:04d}_{first.name}.sql changed after it was applied; "
        "add a new migration instead of editing it"
    )


def test_two_files_with_the_same_version_are_refused_before_anything_runs(
    fresh_database: str, fake_migrations: Path
) -> None:
    (fake_migrations / "0001_users.sql").write_text("CREATE TABLE users (id int);")
    (fake_migrations / "0001_teams.sql").write_text("CREATE TABLE teams (id int);")
    with pytest.raises(MigrationError, match=r"two migration files share a version: \[1, 1\]"):
        migrate(fresh_database)
    assert history(fresh_database) == []
    assert tables(fresh_database, "public") == {"schema_migrations"}


def test_files_are_applied_in_version_order_and_other_files_are_ignored(
    fresh_database: str, fake_migrations: Path
) -> None:
    # 0002 needs the table 0001 makes; written first so that file order is not version order
    (fake_migrations / "0002_seed_users.sql").write_text("INSERT INTO users VALUES (1);")
    (fake_migrations / "0001_create_users.sql").write_text("CREATE TABLE users (id int);")
    (fake_migrations / "3_not_four_digits.sql").write_text("SELECT broken;")
    applied = migrate(fresh_database)
    assert [(m.version, m.name) for m in applied] == [(1, "create_users"), (2, "seed_users")]


def test_a_failing_migration_leaves_no_trace_and_runs_again_once_fixed(
    fresh_database: str, fake_migrations: Path
) -> None:
    (fake_migrations / "0001_create_users.sql").write_text("CREATE TABLE users (id int);")
    broken = fake_migrations / "0002_create_teams.sql"
    broken.write_text("CREATE TABLE teams (id int); INSERT INTO nowhere VALUES (1);")

    with pytest.raises(psycopg.errors.UndefinedTable):
        migrate(fresh_database)
    assert [v for v, _, _ in history(fresh_database)] == [1]  # 0001 stays applied
    assert tables(fresh_database, "public") == {"schema_migrations", "users"}  # no `teams`

    broken.write_text("CREATE TABLE teams (id int);")
    assert [m.version for m in migrate(fresh_database)] == [2]
    assert tables(fresh_database, "public") == {"schema_migrations", "users", "teams"}


def test_concurrent_migrators_apply_each_migration_exactly_once(fresh_database: str) -> None:
    starters = 4
    together = threading.Barrier(starters)
    results: list[list[Migration]] = []
    errors: list[BaseException] = []

    def start() -> None:
        together.wait()
        try:
            results.append(migrate(fresh_database))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(starters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert len(results) == starters
    applied = sorted(m.version for run in results for m in run)
    assert applied == [m.version for m in available()]  # each once, by exactly one starter
    assert [v for v, _, _ in history(fresh_database)] == applied


def test_migrations_go_into_the_schema_asked_for_with_their_own_history(
    fresh_database: str,
) -> None:
    shipped = [m.version for m in available()]
    assert [m.version for m in migrate(fresh_database, schema="tenant_b")] == shipped
    assert {"focus_sessions", "schema_migrations"} <= tables(fresh_database, "tenant_b")
    assert tables(fresh_database, "public") == set()
    assert migrate(fresh_database, schema="tenant_b") == []

    assert [m.version for m in migrate(fresh_database)] == shipped  # public is separate
    assert [v for v, _, _ in history(fresh_database, "tenant_b")] == shipped


def test_the_shipped_migrations_have_unique_ordered_versions_and_match_their_files() -> None:
    package = resources.files("focus_sessions.migrations")
    files = sorted(e.name for e in package.iterdir() if e.name.endswith(".sql"))
    shipped = available()
    assert [f"{m.version:04d}_{m.name}.sql" for m in shipped] == files
    assert len({m.version for m in shipped}) == len(shipped)
    for migration in shipped:
        assert package.joinpath(f"{migration.version:04d}_{migration.name}.sql").read_text(
            encoding="utf-8") == migration.sql
