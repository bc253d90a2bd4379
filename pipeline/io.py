"""Atomic file writes and content hashes.

Every output is written to a temporary name in the destination's directory and renamed into
place, so an interrupted stage leaves either the old output or none, never half a file. A
temporary left behind by a killed process is removed by the next write of the same output.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pipeline import distributed

#: test hook: called with the final path just before a temporary file is renamed into place
FAULT_HOOK: Callable[[Path], None] | None = None


def _remove_leftovers(path: Path) -> None:
    """Delete temporaries of `path` that a killed writer left (the names mkstemp/mkdtemp gave them)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:[a-z0-9_]{{8}}\.tmp|old)")
    for leftover in path.parent.iterdir():
        if pattern.fullmatch(leftover.name):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _flush_to_disk(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the permissions a plain open() would give a new file are those the atomic writers give theirs
_UMASK = _process_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it onto `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_UMASK)  # mkstemp's 0600 would make the report unreadable to anyone else
    try:
        yield tmp_path
        _flush_to_disk(tmp_path)
        if FAULT_HOOK is not None:
            FAULT_HOOK(path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a fresh temporary directory beside `path`; it replaces `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_UMASK)
    try:
        yield tmp
        if FAULT_HOOK is not None:
            FAULT_HOOK(path)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Every writer below comes here. Under torchrun with several processes in one group (pipeline.distributed)
    every process makes the same call: rank 0 alone writes, and all continue once the file is there, or all
    raise rank 0's error."""
    if not distributed.active():
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return
    failure = None
    if distributed.is_main():
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        except Exception as error:  # any failure: the others must not wait for a file that never comes
            failure = error
    reported = distributed.gather_objects(None if failure is None else (getattr(failure, "errno", None),
                                                                        str(getattr(failure, "strerror", None)
                                                                            or failure)))[0]
    if failure is not None:
        raise failure
    if reported is not None:
        raise OSError(reported[0], reported[1], str(path))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_config(obj: Any) -> str:
    """A stable short hash of a JSON-serialisable configuration."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())[:16]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from the params.yaml seed and the identity of the stage and draw."""
    return int(sha256_bytes("/".join(str(p) for p in parts).encode())[:15], 16)
