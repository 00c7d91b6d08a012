"""How the replay's bulk workers are started: from a fork server that has already imported what
they need, the main script's imports included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from focus_sessions.consumers.replay import pool as replay_pool

ROOT = Path(__file__).resolve().parents[2]


def test_the_main_scripts_imports_are_the_loaded_modules_it_took_names_from(monkeypatch):
    main = types.ModuleType("__main__")
    main.__loader__ = sys.modules[__name__].__loader__  # a module's own: not an import
    exec(textwrap.dedent("""
        import json
        from collections import OrderedDict
        from textwrap import dedent as undent
        def here(): pass
        class Here: pass
        answer = 42
    """), main.__dict__)
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert replay_pool.main_imports() == ["collections", "json", "textwrap"]


def test_a_worker_finds_the_main_scripts_imports_already_loaded(tmp_path):
    # CPython 3.11's fork server ignores a "__main__" preload, and every worker runs the main
    # script again: what the script imports must already be loaded, in the server.
    if replay_pool._context().get_start_method() != "forkserver":
        pytest.skip("no fork server here: spawned workers import everything themselves")
    (tmp_path / "marker.py").write_text(
        "import os\nPID = os.getpid()\ndef main():\n    pass\n")
    (tmp_path / "main.py").write_text(textwrap.dedent("""
        import json, os
        from marker import main  # as a console script imports its entry point
        from focus_sessions.consumers.replay import pool as replay_pool

        def report(queue):
            import marker
            queue.put((marker.PID, os.getpid()))

        if __name__ == "__main__":
            ctx = replay_pool._context()
            queue = ctx.Queue()
            worker = ctx.Process(target=report, args=(queue,))
            worker.start()
            print(json.dumps([os.getpid(), *queue.get(timeout=30)]))
            worker.join()
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    done = subprocess.run([sys.executable, str(tmp_path / "main.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    parent, imported_by, worker = json.loads(done.stdout)
    assert imported_by not in (worker, parent)  # the fork server imported it, once
