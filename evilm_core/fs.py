"""Files on disk as a crash, a full disk or a bad byte leaves them (docs/reliability.md).

Writes: every writer in the project goes through `atomic_path`: the content is written to a
temporary name in the same directory (`.NAME.HOST.PID.tmp`, so concurrent writers never collide
and the next run can tell a dead writer's debris from a live one's), flushed, and renamed over
the target with `os.replace`; on any error the temporary file is removed. `disk_errors` turns a
full disk or an I/O error into an EvilmError naming the path and the space needed;
`clean_stale_temps` removes what a killed writer of this host left behind.

Reads: `read_text` decodes UTF-8 and names the file and byte of an invalid sequence;
`escape_key` / `unescape_key` keep file names with tabs, line breaks or non-UTF-8 bytes one
field of one line in keys and TSV files. See docs/design.md, "Checkpoints".
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from evilm_core.errors import EvilmError

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.(?P<kind>tmp|old)$")
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def temp_sibling(path: str | os.PathLike, kind: str = "tmp") -> Path:
    """`.NAME.HOST.PID.tmp` (or `.old`) beside `path`: this process's private name for it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{kind}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:  # a zombie is dead: a killed run's worker may wait long for a reaper (a container's pid 1 may never reap)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def clean_stale_temps(directory: str | os.PathLike) -> list[str]:
    """Remove temporary files and directories that a killed writer on this host left in
    `directory`; a moved-aside `.old` copy whose replacement never arrived is moved back first.
    Live writers' and other hosts' temporaries are left alone. Returns what was done."""
    directory, done = Path(directory), []
    if not directory.is_dir():
        return done
    for entry in sorted(directory.iterdir()):
        m = _TEMP.match(entry.name)
        if not m or m["host"] != _HOST or int(m["pid"]) == os.getpid() or _pid_alive(int(m["pid"])):
            continue
        target = directory / m["name"]
        if m["kind"] == "old" and not target.exists():
            os.replace(entry, target)  # killed between "move old aside" and "move new in"
            done.append(f"restored {target}")
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)
        done.append(f"removed {entry}")
    return done


@contextmanager
def process_lock(path: str | os.PathLike, wait: bool = False) -> Iterator[bool]:
    """Hold an exclusive POSIX record lock on `path` (created if needed). The lock belongs to this
    process and ends with it, however it ends: no stale lock files. Yields False when another
    process holds it and `wait` is off."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def readable_mode(path: Path) -> None:
    """Files get the usual 0666 & ~umask, not the 0600 of a temporary file: a lab shares runs."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def _umask() -> int:
    """The process umask, read once (reading it means setting it: not something to do per file)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None


@contextmanager
def disk_errors(path: str | os.PathLike, needed: int | None = None) -> Iterator[None]:
    """Turn a full disk, a quota, a too-large file or an I/O error while writing `path` into an
    EvilmError that names the path, the free space and (given `needed`, bytes) what is needed."""
    try:
        yield
    except Exception as err:  # torch.save and safetensors wrap the OSError in their own types
        code = disk_errno(err)
        if code is None:
            raise
        raise EvilmError(disk_message(path, code, needed)) from None


def disk_errno(err: BaseException) -> int | None:
    """The errno of a full disk / quota / too-large file / I/O error behind `err`, else None."""
    if isinstance(err, OSError):
        return err.errno if err.errno in DISK_ERRNOS else None
    text = str(err)
    m = re.search(r"os error (\d+)|errno[ =:]*(\d+)", text, re.IGNORECASE)
    code = int(m[1] or m[2]) if m else None
    if code is None:
        code = next((c for c in DISK_ERRNOS if os.strerror(c).lower() in text.lower()), None)
    return code if code in DISK_ERRNOS else None


def disk_message(path: str | os.PathLike, code: int, needed: int | None = None) -> str:
    path = Path(path)
    probe = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    want = f"; about {human_size(needed)} is needed" if needed else ""
    return (f"cannot write {path}: {os.strerror(code)} ({human_size(free)} free on its "
            f"file system{want}). The previous complete files are intact; free space (or fix the disk) and run "
            "the same command again")


def human_size(n: float) -> str:
    """Bytes for people: '512 B', '3.5 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@contextmanager
def atomic_dir(directory: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory beside `directory` to fill; when the block ends without
    an error it becomes `directory` (publish_dir). A full disk or an I/O error is an EvilmError
    naming `directory` and the space (`needed` bytes); no temporary is left either way."""
    directory = Path(directory)
    tmp = temp_sibling(directory)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with disk_errors(directory, needed):
            tmp.mkdir(parents=True)
            yield tmp
            publish_dir(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, directory: Path) -> None:
    """Make the complete directory `tmp` the one named `directory`, its files readable by the lab.
    One that exists is moved aside first (`.NAME.HOST.PID.old`), so a complete copy exists at every
    moment; a kill between the two renames is undone by the next run's clean_stale_temps."""
    for f in (tmp, *tmp.iterdir()):
        readable_mode(f)  # safetensors writes 0600; a lab shares its checkpoints
    if directory.exists():
        old = temp_sibling(directory, "old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with disk_errors(path):
            yield tmp
            if tmp.exists() and stat.S_IMODE(tmp.stat().st_mode) == 0o600:
                readable_mode(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str | Iterable[str], fsync: bool = True) -> Path:
    """Write `text` (or its pieces, streamed) as UTF-8 with '\\n' line ends to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.writelines([text] if isinstance(text, str) else text)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    return Path(path)


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write JSON objects one per line, streamed and atomically (a manifest is never read half-written)."""
    return atomic_write_text(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A UTF-8 text file; invalid bytes are an EvilmError naming the file, the byte and the line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise EvilmError(f"{path}: the {what} is not UTF-8 text (byte {err.start}, line {line}: "
                         f"{data[err.start:err.start + 4]!r}); save it as UTF-8") from None


_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[\\tnr])")


def escape_key(key: str) -> str:
    """A key as one TSV field of one valid UTF-8 line: backslash, tab, CR and LF are written
    `\\\\ \\t \\r \\n`, other control characters (NUL, ESC, ...) `\\u00NN`, and bytes that were
    not UTF-8 in a file name (Python's surrogate escapes) `\\xNN`. Keys without those characters
    are unchanged."""
    if key.isprintable() and "\\" not in key:
        return key
    out = []
    for ch in key:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= ord(ch) <= 0xDCFF:
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_key(field: str) -> str:
    """The inverse of `escape_key`."""
    if "\\" not in field:
        return field
    simple = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
    return _UNESCAPE.sub(lambda m: chr(0xDC00 + int(m[1][1:], 16)) if m[1][0] == "x"
                         else chr(int(m[1][1:], 16)) if m[1][0] == "u" else simple[m[1]], field)
