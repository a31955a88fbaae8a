"""Files the gateway writes are its owner's alone: 0600 files in 0700 directories.

The database, its WAL, the events file and outbox, kept enrolment audio and the keys hold
biometric data, biokeys and secrets; other local users must not read them (docs/security.md).
Modes are set explicitly where each file is created (not left to the process umask, which
the gateway also tightens at `serve`), and tightened at start-up on files an older version
created world-readable. SQLite creates a database's -wal and -shm files with the database
file's own mode, so creating the database file 0600 first covers them."""
from __future__ import annotations

import os
import stat
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: Path | str) -> Path:
    """`mkdir -p` whose every new directory is 0700 (an existing one is left as it is:
    it may be a shared parent such as /var/lib)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)             # mkdir's mode is masked by the umask
    return path


def tighten(path: Path | str, mode: int = FILE_MODE) -> None:
    """Make an existing file (or directory, with DIR_MODE) owner-only; absent is fine."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, mode)


def create_private(path: Path | str) -> None:
    """Create `path` (and its directories) owner-only if absent, tighten it if present."""
    path = Path(path)
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def prepare_sqlite(path: Path | str) -> None:
    """Before sqlite3.connect: the database file exists 0600 (so SQLite gives its -wal and
    -shm the same mode), and side files left by an older version are tightened."""
    create_private(path)
    for suffix in SQLITE_SIDE_FILES:
        tighten(f"{path}{suffix}")


def open_private(path: Path | str, mode: str = "a", encoding: str | None = "utf-8"):
    """open() for a file created 0600 (appending to an existing one tightens it)."""
    path = Path(path)
    private_dir(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, mode, encoding=encoding) if "b" not in mode else os.fdopen(fd, mode)


def tighten_tree(root: Path | str) -> int:
    """Make every file and directory under `root` (itself included) owner-only; returns
    how many were changed (a data directory written by an older version)."""
    root = Path(root)
    if not root.exists():
        return 0
    changed = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name, mode in [(dirpath, DIR_MODE)] + [(os.path.join(dirpath, f), FILE_MODE) for f in filenames]:
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(name, mode)
                changed += 1
    return changed
