"""A throwaway PostgreSQL server for tests: Debian's binaries, a temporary data directory, a loopback port.

The server runs as the `postgres` system user when the tests run as root (postgres refuses root), and as
the current user otherwise. `start_postgres` returns None with a reason when no server can start, so the
tests that need it skip saying why.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PostgresServer:
    url: str
    data_dir: Path
    pg_ctl: str
    run_as: list[str]

    def stop(self) -> None:
        subprocess.run([*self.run_as, self.pg_ctl, "-D", str(self.data_dir), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def find_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_postgres() -> tuple[PostgresServer | None, str]:
    """Start a server; return (server, "") or (None, why not)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return None, "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb); run `make postgres`"
    run_as: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return None, "running as root without `runuser` to drop to the postgres user"
        run_as = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="peftplan-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if run_as:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    os.chmod(root, 0o700)
    init = subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "peftplan", "--auth=trust",
                           "-E", "UTF8", "--no-sync"], capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        return None, f"initdb failed: {init.stderr.strip().splitlines()[-1:]}"
    port = free_port()
    options = f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c max_connections=200"
    started = subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options,
                              "-l", str(root / "server.log"), "-w", "-t", "60", "start"],
                             capture_output=True, text=True, timeout=90)
    server = PostgresServer(f"postgresql://peftplan@127.0.0.1:{port}/postgres", data, str(bin_dir / "pg_ctl"), run_as)
    if started.returncode != 0:
        server.stop()
        return None, f"pg_ctl start failed: {started.stderr.strip()[-300:]}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            import psycopg2

            psycopg2.connect(server.url).close()
            return server, ""
        except Exception as exc:  # still starting up
            reason = str(exc)
            time.sleep(0.2)
    server.stop()
    return None, f"the server never accepted connections: {reason}"


def create_database(admin_url: str, name: str) -> str:
    """A fresh database on the server; returns its URL."""
    import psycopg2

    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"
