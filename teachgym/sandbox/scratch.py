"""The host scratch directory of an unsafe run: making it, and removing it safely
whatever the program left in it."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Any

#: Directories held open at once while removing a tree; a deeper one is moved
#: up to the top and removed from there, so depth costs neither stack nor fds.
_MAX_OPEN = 32
#: Entries removed before giving up (a program that still adds entries).
_MAX_ENTRIES = 1_000_000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int) -> int:
    """Open the directory ``name`` in ``dir_fd`` without following a link.

    One the program made unreadable (mode 0) is given back its owner's rights
    first, through an ``O_PATH`` descriptor of that very directory, so the
    ``chmod`` cannot land on a link's target."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        path_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{path_fd}", 0o700)
        finally:
            os.close(path_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _remove_tree(path: str) -> str | None:
    """Remove ``path`` and everything under it. ``None`` when gone, else why not; never raises.

    Descriptor-relative throughout: a symbolic link is unlinked, never
    followed (nor ``chmod``-ed through); a directory is opened with
    ``O_NOFOLLOW``; ``chmod`` only touches directories opened that way. No
    recursion: an explicit stack of at most :data:`_MAX_OPEN` open
    directories, deeper ones moved up to the top directory and removed from
    there, so a tree of any depth costs bounded memory and descriptors.
    """
    try:
        return _remove_tree_fds(path)
    except Exception as e:  # whatever the program left behind, the batch goes on
        return f"{type(e).__name__}: {e}"


def _remove_tree_fds(path: str) -> str | None:
    parent_fd = os.open(os.path.dirname(os.path.abspath(path)), _DIR_FLAGS)
    name = os.path.basename(os.path.abspath(path))
    stack: list[tuple[int, str, Any]] = []
    try:
        try:
            top = _open_dir(name, parent_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno != errno.ELOOP and e.errno != errno.ENOTDIR:
                raise
            os.unlink(name, dir_fd=parent_fd)  # replaced by a link or a file: remove that
            return f"{path} had been replaced by a non-directory, which was removed"
        stack.append((top, name, None))
        return _drain(path, stack, parent_fd, top)
    finally:
        for fd, _, entries in stack:
            if entries is not None:
                entries.close()
            os.close(fd)
        os.close(parent_fd)


def _drain(path: str, stack: list[tuple[int, str, Any]], parent_fd: int, top: int) -> str | None:
    """Empty and remove the directories on ``stack`` (``(fd, name, scandir or None)``,
    the top one first), deepest first; None when all are gone, else why not.

    Each directory is popped (and its descriptor closed) once it is removed;
    whatever is still on ``stack`` when this returns or raises is the
    caller's to close.
    """
    removed = hoisted = steps = 0
    while stack:
        steps += 1
        if steps > 4 * _MAX_ENTRIES:
            return f"{path} keeps changing while it is removed"

        fd, name, entries = stack[-1]
        if entries is None:
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o700)  # so its entries can be unlinked by a non-root owner
            entries = os.scandir(fd)
            stack[-1] = (fd, name, entries)
        entry = next(entries, None)
        if entry is None:
            entries.close()
            try:
                os.rmdir(name, dir_fd=stack[-2][0] if len(stack) > 1 else parent_fd)
            except OSError as e:
                if e.errno != errno.ENOTEMPTY:
                    raise
                stack[-1] = (fd, name, None)  # entries came (or were moved) in: list again
                continue
            os.close(fd)
            stack.pop()
            continue
        removed += 1
        if removed > _MAX_ENTRIES:
            return f"more than {_MAX_ENTRIES} entries under {path}"
        if not entry.is_dir(follow_symlinks=False):
            os.unlink(entry.name, dir_fd=fd)
        elif len(stack) < _MAX_OPEN:
            stack.append((_open_dir(entry.name, fd), entry.name, None))
        else:  # too deep to hold open: move it to the top, remove it from there
            hoisted = _hoist(entry.name, fd, top, hoisted)
    return None


def _hoist(name: str, dir_fd: int, top: int, hoisted: int) -> int:
    """Move the directory ``name`` in ``dir_fd`` up into ``top`` as ``.deep-N``, N the
    first number above ``hoisted`` not taken there; returns N."""
    while True:
        hoisted += 1
        try:
            os.rename(name, f".deep-{hoisted}", src_dir_fd=dir_fd, dst_dir_fd=top)
            return hoisted
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise


def _make_scratch(code: str, uid: int) -> tuple[str, str]:
    """A host directory for an unsafe run: ``(top, work)``; ``work`` holds ``main.py``.

    ``top`` stays the parent's (root's, mode 0711), so a program running as a
    private id cannot move it away or replace it with a link; ``work`` is the
    program's."""
    top = tempfile.mkdtemp(prefix="teachgym-sandbox-")
    work = os.path.join(top, "work")
    os.mkdir(work, 0o700)
    Path(work, "main.py").write_text(code, encoding="utf-8")
    if uid >= 0:
        os.chmod(top, 0o711)
        os.chown(work, uid, uid)
    return top, work
