"""A real ``nmrn serve`` process on a free loopback port, for the tests that need one: started
with the command's own entry point, awaited on ``/healthz``, stopped by its own PID."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

# the serve command alone (``python -m nmrn serve`` would import every command)
SERVE = """
import argparse, sys
from nmrn.serving.commands import add_serve_command, run_serve
parser = argparse.ArgumentParser()
add_serve_command(parser.add_subparsers(dest="command"))
sys.exit(run_serve(parser.parse_args(sys.argv[1:])))
"""


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(ckpt: Path, port: int, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 30.0) -> subprocess.Popen[bytes]:
    """``nmrn serve --checkpoint ckpt --port port *args`` (with ``env`` added to this process's
    environment), returned once ``/healthz`` answers 200; killed, with its output in the
    assertion, if it exits or does not answer within ``timeout`` seconds."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "serve", "--checkpoint", str(ckpt), "--port", str(port),
         *args],
        env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server did not start: {proc.communicate()[0].decode()[-3000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
