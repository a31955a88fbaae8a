"""Start-up checks that turn an operator's mistake into one clear line before anything claims
to be running: the data directory must be writable and the listening socket must bind.

`vbgw serve` prints `listening` and the app logs `gateway_started` only after both held (the
socket is bound before the app starts, and handed to aiohttp as is)."""
from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path


class StartupError(Exception):
    """The gateway cannot start; the message is the one line the CLI prints (exit 1)."""


def check_writable_dir(path: Path, what: str) -> None:
    """Create `path` if needed and prove a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".vbgw-write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StartupError(f"{what} {path.resolve()} is not writable: {exc.strerror or exc}") from None


def check_data_dir(settings) -> None:
    """Everything the gateway writes lives under server.data_dir; the events files may be
    configured elsewhere (absolute paths), so their directories are checked too."""
    check_writable_dir(settings.data_dir, "data directory")
    for p in {settings.sqlite_path.parent, settings.events.jsonl_path.parent, settings.events.outbox_path.parent}:
        if p.resolve() != settings.data_dir.resolve():
            check_writable_dir(p, "directory")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or StartupError naming the address and cause."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})") from None
    # one socket: the IPv4 address when a name has both (aiohttp would bind each)
    family, type_, proto, _, addr = sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        hint = {errno.EADDRINUSE: " (another process has that port: stop it, or choose another with server.port / "
                                  "VBGW_SERVER__PORT)",
                errno.EACCES: " (ports below 1024 need privileges: use a higher server.port)",
                errno.EADDRNOTAVAIL: " (no such address on this machine: check server.host)"}.get(exc.errno or 0, "")
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    sock.setblocking(False)
    return sock
