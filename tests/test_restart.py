"""Restarting the server in place (Extensions tab's "Apply and restart UI"): the same command line starts again,
after the jobs already queued, with the extensions' unload callbacks run first."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from modules import call_queue, restart, script_callbacks


def test_restart_program_starts_the_same_command_again(tmp_path):
    """A real exec: a small program restarts itself once through restart_program and says so."""
    program = tmp_path / "server.py"
    program.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parents[1])!r})
        from modules import restart
        if os.environ.get("RESTARTED") == "1":
            print("second start with", sys.argv[1:])
        else:
            os.environ["RESTARTED"] = "1"
            print("first start", flush=True)
            restart.restart_program()
    """))
    out = subprocess.run([sys.executable, str(program), "--port", "7999"], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.splitlines() == ["first start", "second start with ['--port', '7999']"], out.stderr


def test_the_restart_waits_for_queued_jobs_and_calls_unload_callbacks(monkeypatch):
    monkeypatch.setattr(restart, "DELAY_S", 0.0)
    order = []
    script_callbacks.on_script_unloaded(lambda: order.append("unloaded"))
    try:
        first = call_queue.queue.submit("test", lambda: (time.sleep(0.3), order.append("job"))[1])
        job = restart.request_restart(exec_fn=lambda path, argv: order.append(("exec", argv)))
        job.wait(timeout=30)
        first.wait(timeout=30)
    finally:
        script_callbacks.remove_current_script_callbacks()
    assert order[0] == "job" and order[1] == "unloaded"
    assert order[2] == ("exec", [sys.executable, *sys.argv])
