"""Writing files safely: atomically (a reader, or a run resumed after a crash, sees the old file or
the new one), by one writer at a time (`lock_for_writing`), where the space is there (`reserve`,
`check_writable`), to paths checked before anything is written (`check_output_path`); and the
digest that says a file is still what was written (`file_sha256`)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # not a POSIX system: no advisory locks, one writer is the user's to keep
    fcntl = None

# The lock file of a directory written by one process at a time (a cache, a training run).
LOCK_FILE = ".lock"
# Errors that mean the disk (or the user's quota) has no room.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# Bytes read at a time when a file is digested.
DIGEST_CHUNK = 4 * 2**20


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open `path` for writing so that readers see the old file or the whole new one, never half.

    The data goes to a temporary file beside it (`NAME.*.tmp`, one of its own for each writer, so
    that two processes writing the same file never write into one temporary), reaches the disk
    (fsync), then is renamed over.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    # O_EXCL: never another writer's temporary; mode 0o666 less the umask, as open() gives.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        # A full disk, an error or Ctrl-C mid-write: the old file stays, the torn copy goes.
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            # A failed write or fsync names no file: name the one being written.
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, obj, **dumps_kwargs) -> None:
    """`obj` as indented JSON at `path`, written with `atomic_file`."""
    with atomic_file(path) as f:
        f.write((json.dumps(obj, indent=1, **dumps_kwargs) + "\n").encode())


def check_output_path(path: str | os.PathLike, flag: str, *, directory: bool) -> Path:
    """Refuse, before anything is written, an output path that cannot be written as asked: a
    symbolic link to nothing (a loop or a missing target), a file where a directory is wanted or
    the reverse, or a file among its parents. `flag` names the option in the message."""
    path = Path(path)
    # exists() follows links and is False for a loop or a missing target; is_symlink() is not.
    if path.is_symlink() and not path.exists():
        raise ValueError(
            f"{flag} {path} is a symbolic link to nothing (a loop or a missing target); remove "
            "the link or pick another path"
        )
    if path.exists() and path.is_dir() != directory:
        wanted, found = ("a directory", "a file") if directory else ("a file", "a directory")
        raise ValueError(f"{flag} {path} is {found}, not {wanted}; pick another path")
    for parent in path.parents:
        if parent.is_symlink() or parent.exists():
            if not parent.is_dir():
                raise ValueError(
                    f"{flag} {path} cannot be written: {parent} is not a directory (a file or a "
                    "broken link); pick another path"
                )
            break
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read a few MB at a time (any size fits in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(DIGEST_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def reserve(path: str | os.PathLike, size: int | None = None) -> bool:
    """Allocate `size` bytes (default: the file's length) of the file at `path` on the disk now,
    so that writing into them later (through a memory map, where a full disk is SIGBUS, not an
    error) cannot run out of space. OSError (ENOSPC) if the disk cannot hold them; False where
    the filesystem cannot reserve space (then only a check of the free space beforehand
    guards against a disk that fills up), True where it did."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: no reservation
        return False
    with open(path, "r+b") as f:
        length = os.fstat(f.fileno()).st_size if size is None else size
        if length == 0:
            return True
        try:
            os.posix_fallocate(f.fileno(), 0, length)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                return False
            raise OSError(e.errno, os.strerror(e.errno), str(path)) from None
    return True


def check_writable(directory: str | os.PathLike, flag: str, needed: int = 0) -> Path:
    """Refuse, before any work is done, a directory that cannot take `needed` bytes of this
    process's output: it is made (with its parents), a file of that size is written into it
    (its space reserved where the filesystem can) and removed. ValueError in one line naming
    `flag` and the directory."""
    directory = Path(directory)
    probe = directory / f".write-test.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb"):
            pass
        # Where the filesystem cannot reserve space, its free space is all there is to check.
        if needed and not reserve(probe, needed) and shutil.disk_usage(directory).free < needed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    except OSError as e:
        if e.errno in NO_SPACE:
            raise ValueError(
                f"{flag} {directory} has no room for {needed / 2**20:.1f} MiB of output "
                f"({e.strerror}); free some space or pick another path"
            ) from None
        raise ValueError(
            f"{flag} {directory} cannot be written ({e.strerror or e}); make it writable or "
            "pick another path"
        ) from None
    finally:
        probe.unlink(missing_ok=True)
    return directory


class WriterBusyError(ValueError):
    """Another process writes where this one would; the message names it."""


class WriterLock:
    """One writer at a time: an advisory lock (`flock`) on a lock file, held by the process
    that writes and released by the kernel when it dies, so that a lock left by a killed
    process never blocks the rerun that resumes its work. Made by `lock_for_writing`; the
    file holds its owner's pid, host, command line and start time, which a refused writer is
    told, and the id of its job (`job`), which the other processes of one job (the ranks of a
    torchrun job whose rank 0 holds the lock) pass to `lock_for_writing` to write beside it."""

    def __init__(self, path: Path, job: str | None, handle: BinaryIO | None = None) -> None:
        self.path = path
        self.job = job
        """The holder's job id (None where no lock was taken)."""
        self._handle = handle

    @property
    def held(self) -> bool:
        """Whether this process holds the lock itself (not as part of another's job)."""
        return self._handle is not None

    def release(self) -> None:
        """Remove the lock file and release the lock (the file first: see `lock_for_writing`)."""
        if self._handle is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only directory: the file stays, its lock goes
        self._handle.close()
        self._handle = None

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        # Dropped without release (a test that stands in for a killed process): the kernel
        # releases the lock when the file closes, the file itself stays, as after a kill.
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()


def lock_for_writing(
    lock_file: str | os.PathLike, what: str, *, job: str | None = None
) -> WriterLock:
    """The lock on `lock_file` (whose directory must exist) for writing `what`, held until
    `release()` or the end of the process; `WriterBusyError` in one line naming the process
    that holds it.

    `job`: the id of the job that holds the lock (`WriterLock.job`, which its first process
    shares with the others, e.g. rank 0 of a torchrun job with the other ranks): this process
    then writes as part of that job, takes nothing, and is refused unless that job holds the
    lock now. A directory this process cannot write into (read-only) gets no lock, since this
    process cannot write there either; nor does a system without `fcntl`.
    """
    lock_file = Path(lock_file)
    if fcntl is None:
        return WriterLock(lock_file, None)
    if job is not None:
        return _join(lock_file, what, job)
    for _ in range(100):  # a retry only when a holder released the file between open and lock
        try:
            handle = open(lock_file, "a+b")
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            try:  # a lock file this process may not change: lock it all the same
                handle = open(lock_file, "rb")
            except OSError:
                return WriterLock(lock_file, None)  # a read-only directory: no writer here
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(handle)
            handle.close()
            raise WriterBusyError(
                f"{what} is being written by another process ({owner}); wait for it to finish, "
                "or stop it and rerun"
            ) from None
        # The holder before us removes the file before releasing it: if what we locked is no
        # longer the file at that path, another writer may hold a new one there; start over.
        try:
            same = os.path.samestat(os.fstat(handle.fileno()), os.stat(lock_file))
        except FileNotFoundError:
            same = False
        if not same:
            handle.close()
            continue
        job_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        _write_owner(handle, job_id)
        return WriterLock(lock_file, job_id, handle)
    raise WriterBusyError(f"{what}: its lock file {lock_file} keeps changing; rerun")


def _owner_record(job: str) -> dict:
    command = " ".join(" ".join(sys.argv).split())
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command if len(command) <= 160 else command[:157] + "...",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "job": job,
    }


def _write_owner(handle: BinaryIO, job: str) -> None:
    if not handle.writable():
        return
    handle.seek(0)
    handle.truncate()
    handle.write((json.dumps(_owner_record(job)) + "\n").encode())
    handle.flush()


def _read_owner(handle: BinaryIO) -> dict:
    handle.seek(0)
    try:
        record = json.loads(handle.read(4096).decode())
    except (ValueError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _owner(handle: BinaryIO) -> str:
    """The lock's holder, in words, from what it wrote into the lock file."""
    record = _read_owner(handle)
    if "pid" not in record:
        return "its owner is just starting"
    return (
        f"pid {record['pid']} on {record.get('host', '?')} since {record.get('started', '?')}: "
        f"{record.get('command', '?')}"
    )


def _join(lock_file: Path, what: str, job: str) -> WriterLock:
    """Write as part of the job `job` that holds the lock on `lock_file`, or refuse."""
    try:
        handle = open(lock_file, "rb")
    except FileNotFoundError:
        raise WriterBusyError(
            f"{what} is not locked by job {job} (no lock file): start the job's first process, "
            "which takes the lock, before the others"
        ) from None
    with handle:
        record = _read_owner(handle)
        try:  # a shared lock is refused while a writer holds the exclusive one
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            held = False
        except BlockingIOError:
            held = True
    if not held or record.get("job") != job:
        holder = f"job {record.get('job')}" if held else "no process"
        raise WriterBusyError(
            f"{what} is not locked by job {job} but by {holder}; rerun the whole job"
        )
    return WriterLock(lock_file, job)
