"""File helpers shared by training, export and scoring: content hashes and atomic writes.

Every output of the product appears only complete: it is written to a temporary name in the same
directory, flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TMP_PREFIX = ".cusemo-tmp-"


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


# mkstemp creates 0600 files; outputs are read by other users (BI tools), so give them the mode a
# plain open() would: 0666 minus the process umask.
_FILE_MODE = 0o666 & ~_umask()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path next to ``target``; on success fsync it and rename it onto ``target``.

    On error the temp file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temp name ends in .tmp, not the target's suffix, so globs like **/*.parquet never see it.
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        crash_point("before_rename")
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_crash_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Crash-safety testing hook: ``CUSEMO_CRASH_AT=name:n`` SIGKILLs this process at the n-th hit.

    Lets the test suite kill a real run at exact moments (mid-file, between a call's tables,
    after the manifest) instead of at random times. A no-op unless the variable is set.
    """
    spec = os.environ.get("CUSEMO_CRASH_AT")
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] == int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
