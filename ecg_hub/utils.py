"""Small helpers shared across ecg-hub: one atomic JSON writer, one keyword filter by signature, one
explanation of full-disk and read-only errors.

Standard library only, so any module (training, evaluation, pipelines, the Hub publisher) can
import it without pulling in anything else.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["accepted_kwargs", "accepts_var_kwargs", "explain_disk_errors", "explicit_parameters", "write_json_atomic"]

#: errno values that mean "the output cannot be written here" (full disk, quota, read-only, permissions).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


@contextlib.contextmanager
def explain_disk_errors(what: str, keeps: str):
    """Re-raise a full-disk / read-only / permission ``OSError`` met while doing ``what`` as an
    ``OSError`` of the same errno whose message says what failed, that ``keeps`` (what is still
    intact, e.g. "the previous checkpoint step_00000010") and what to do; other errors pass."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_ERRNOS:
            raise
        advice = (
            "free some space" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "make the folder writable"
        )
        raise OSError(
            error.errno,
            f"{what} failed: {error.strerror or error} ({errno.errorcode.get(error.errno, error.errno)}"
            f"{', ' + str(error.filename) if error.filename else ''}); {keeps}. {advice.capitalize()} and run it again",
        ) from error


def write_json_atomic(path: str | os.PathLike, document: Any, *, indent: int = 2, sort_keys: bool = False) -> None:
    """Write ``document`` as JSON to ``path`` atomically.

    The JSON goes to a temporary file in the same folder (created if missing), is flushed and
    ``fsync``-ed, then renamed over ``path`` with ``os.replace``: a reader sees the old file or the
    new one, never half of one, even after a crash. The file ends with a newline.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=indent, sort_keys=sort_keys)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_figure_atomic(fig, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """``fig.savefig`` to ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``), in the format of the suffix (default PNG), with the usual file mode (``mkstemp``
    makes 0600 files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, format=(path.suffix.lstrip(".") or "png"))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _parameters(function: Callable) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(function).parameters


def explicit_parameters(function: Callable) -> set[str]:
    """The parameter names ``function`` declares that a keyword can fill (``*args`` / ``**kwargs``
    catch-alls excluded); empty for a callable without a signature (some builtins)."""
    try:
        parameters = _parameters(function)
    except (TypeError, ValueError):
        return set()
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name for name, p in parameters.items() if p.kind in keyword}


def accepts_var_kwargs(function: Callable) -> bool:
    """True when ``function`` takes ``**kwargs``."""
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in _parameters(function).values())


def accepted_kwargs(function: Callable, mapping: Mapping[str, Any], *, explicit_only: Iterable[str] = ()) -> dict:
    """The entries of ``mapping`` that ``function`` accepts as keyword arguments.

    Every entry when ``function`` takes ``**kwargs``, else the entries its signature names. Keys
    in ``explicit_only`` are kept only when the signature names them (not through ``**kwargs``),
    e.g. an optional ``lead_mask`` that a ``forward(**kwargs)`` would not expect.
    """
    parameters = _parameters(function)
    var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    explicit_only = set(explicit_only)
    return {
        key: value
        for key, value in mapping.items()
        if key in parameters or (var_kwargs and key not in explicit_only)
    }
