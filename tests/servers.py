"""Real servers for tests, started from this machine's binaries: PostgreSQL (initdb + postgres) and `chroma run`."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_chroma(folder: Path):
    """A real `chroma run` on a free loopback port; skips the test if it cannot start."""
    chroma = Path(sys.executable).parent / "chroma"
    command = str(chroma) if chroma.exists() else shutil.which("chroma")
    if not command:
        pytest.skip("the chroma CLI is not installed")
    port = free_port()
    log_path = folder / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([command, "run", "--path", str(folder / "db"), "--host", "127.0.0.1",
                                    "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    pytest.skip(f"chroma run exited with {process.returncode}: {log_path.read_text()[-500:]}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.skip("chroma run did not answer its heartbeat within 60 s")
                time.sleep(0.2)
            yield process, port
        finally:
            stop(process)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _binaries() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


@contextlib.contextmanager
def running_postgres():
    """A real PostgreSQL server from the machine's binaries on a free port; yields its URL, skips the test if it cannot start."""
    pytest.importorskip("psycopg")
    binaries = _binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries on this machine")
    # PostgreSQL refuses to run as root; use the postgres system user when we are root.
    as_user = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    if as_user and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser")
    # Directly under /tmp: pytest's own temp folders are private to root, and postgres must reach its data.
    base = Path(tempfile.mkdtemp(prefix="newsdesk-pg-"))
    data, sockets = base / "data", base / "sock"
    sockets.mkdir()
    if as_user:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
        base.chmod(0o755)
    init = subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "newsdesk", "--auth=trust", "-E", "UTF8"],
                          capture_output=True, text=True)
    if init.returncode != 0:
        pytest.skip(f"initdb failed: {init.stderr[-300:]}")
    port = free_port()
    server = subprocess.Popen(
        [*as_user, str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets), "-h", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"postgresql+psycopg://newsdesk@127.0.0.1:{port}/postgres"
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=newsdesk dbname=postgres", connect_timeout=2).close()
            break
        except psycopg.OperationalError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.skip("PostgreSQL did not start")
            time.sleep(0.2)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def toml_dumps(data: dict) -> str:
    """Enough TOML for a test config: tables, arrays of tables, strings, numbers, booleans and lists of them."""
    import json

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(f"no TOML for {type(v).__name__}")

    lines: list[str] = []

    def table(prefix: str, node: dict) -> None:
        plain = {k: v for k, v in node.items() if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))}
        if prefix and plain:
            lines.append(f"[{prefix}]")
        lines.extend(f"{json.dumps(k)} = {value(v)}" for k, v in plain.items())
        for key, v in node.items():
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(v, dict):
                table(name, v)
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for entry in v:
                    lines.append(f"[[{name}]]")
                    lines.extend(f"{json.dumps(k)} = {value(x)}" for k, x in entry.items())

    table("", data)
    return "\n".join(lines) + "\n"
