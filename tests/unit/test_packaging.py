"""Installed, the project claims one top-level name, ``focus_sessions``.

The repository keeps the design card's folders (``contracts/``, ``producers/``, ...); the wheel maps
them under ``focus_sessions``. A service with its own ``contracts`` package installs this one next
to it and imports the publisher exactly as ``docs/producing.md`` shows.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The repository's folders that the wheel installs (under ``focus_sessions``).
MAPPED = ("focus_sessions", "contracts", "producers", "consumers", "projections", "migrations")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the tracked files (the checkout stays clean)."""
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    str(source)], check=True, timeout=300)
    return next(out.glob("focus_sessions-*.whl"))


def test_the_wheel_claims_one_top_level_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"focus_sessions"}
    # every folder of the design card is inside, with the migrations' SQL
    for folder in ("contracts", "producers", "consumers", "projections", "migrations", "api"):
        assert f"focus_sessions/{folder}/__init__.py" in names
    assert any(re.fullmatch(r"focus_sessions/migrations/\d{4}_\w+\.sql", n) for n in names)
    # and every package of the repository (pyproject lists them: a new one must be added there)
    tracked = subprocess.run(["git", "ls-files", "*__init__.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    for init in tracked:
        if init.split("/")[0] in MAPPED:
            inside = init if init.startswith("focus_sessions/") else f"focus_sessions/{init}"
            assert inside in names, f"{init} is not in the wheel: add its package to pyproject"


def test_the_documented_imports_work_next_to_a_users_own_contracts_package(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    service = tmp_path / "service"
    (service / "contracts").mkdir(parents=True)
    (service / "contracts" / "__init__.py").write_text("OWNER = 'the service'\n")
    documented = re.findall(r"^(from focus_sessions\.\S+ import [\w, ]+)$",
                            (ROOT / "docs" / "producing.md").read_text(), flags=re.MULTILINE)
    assert any("Publisher" in line for line in documented), documented
    program = "\n".join([
        "import contracts, focus_sessions",
        *documented,
        "assert contracts.OWNER == 'the service'",
        f"assert focus_sessions.__file__.startswith({str(site)!r}), focus_sessions.__file__",
        "import focus_sessions.contracts.events as events",
        f"assert events.__file__.startswith({str(site)!r}), events.__file__",
        "print('ok')",
    ])
    # the installed copy comes first on the path; the service's folder is the working directory
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", program], cwd=service, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
