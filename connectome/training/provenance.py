"""Paths and command lines as model cards record them: relative to the repository root.

A model directory records how it was made (``model.json`` ``training.command``, the data folders)
and its ``MODEL_CARD.md`` repeats that. Written as the trainer saw them, those would be
machine-specific absolute paths (``/home/me/checkout/unet/configs/x.yaml``) that mean nothing on
another checkout. When the package runs from a source checkout (the folder holding
``pyproject.toml`` and ``connectome/``), every path inside it is written relative to that root
(``unet/configs/x.yaml``, ``data/b1101``); paths outside it are written absolute, as they are the
only honest record of where the data was. Installed from a wheel there is no checkout, and paths
are written absolute.

Inside/outside is decided on the path as written (made absolute against the working directory,
``..`` folded), so a folder reached through a symlink in the checkout (``data -> /scratch/data``)
still counts as inside it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path


def repo_root() -> Path | None:
    """The source checkout this package runs from, or None when it is installed."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "connectome").is_dir():
        return root
    return None


def _roots(root: Path) -> list[str]:
    out = [os.path.abspath(root)]
    real = os.path.realpath(root)
    if real not in out:
        out.append(real)
    return out


def portable_path(path: str | os.PathLike, root: Path | None = None, cwd: Path | None = None) -> str:
    """``path`` relative to the repository root when it lies inside it (``.`` for the root itself),
    else absolute. ``root`` defaults to :func:`repo_root` (None: no checkout, always absolute);
    ``cwd`` to the working directory, against which a relative ``path`` is read."""
    if root is None:
        root = repo_root()
    text = os.fspath(path)
    absolute = os.path.normpath(os.path.join(os.fspath(cwd) if cwd is not None else os.getcwd(), text))
    if root is not None:
        for candidate in (absolute, os.path.realpath(absolute)):
            for r in _roots(root):
                if candidate == r:
                    return "."
                if candidate.startswith(r.rstrip(os.sep) + os.sep):
                    return Path(os.path.relpath(candidate, r)).as_posix()
    return absolute


def _looks_like_path(token: str, cwd: Path | None, option_value: bool) -> bool:
    """A token names a file or folder when it is absolute or has a ``/`` in it, or -- only as the
    value of an option, so that subcommand words stay words -- when it exists."""
    if not token or token.startswith("-"):
        return False
    if os.path.isabs(token) or "/" in token or token in (".", ".."):
        return True
    base = os.fspath(cwd) if cwd is not None else os.getcwd()
    return option_value and os.path.exists(os.path.join(base, token))


def portable_command(argv: Sequence[str], root: Path | None = None, cwd: Path | None = None) -> str:
    """The command line ``argv`` as a model card records it: the program as ``connectome`` (when
    it is the ``connectome`` entry point or ``python -m connectome``'s ``__main__.py``) and every
    argument that names a file or folder through :func:`portable_path`, shell-quoted."""
    args = [str(a) for a in argv]
    out: list[str] = []
    for i, arg in enumerate(args):
        if i == 0 and (arg.endswith("__main__.py") or Path(arg).name == "connectome"):
            out.append("connectome")
        elif arg.startswith("--") and "=" in arg:
            flag, value = arg.split("=", 1)
            out.append(f"{flag}={portable_path(value, root, cwd)}" if _looks_like_path(value, cwd, True) else arg)
        elif _looks_like_path(arg, cwd, i > 0 and args[i - 1].startswith("-")):
            out.append(portable_path(arg, root, cwd))
        else:
            out.append(arg)
    return " ".join(shlex.quote(a) for a in out)
