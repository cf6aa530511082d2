"""Where ``connectome train KIND --out MODEL_DIR`` puts its model: refuse a finished model directory
unless ``--overwrite``, and export atomically.

A model directory is *finished* once it holds ``model.json`` (written last by every
``write_model_dir``, after the weights). A directory with only ``train/`` (checkpoints, logs of a
run that has not exported yet) is unfinished: rerunning the command resumes it.

The export (:func:`staged_model_dir`) is written into a hidden sibling directory; on success the
entries of the old ``MODEL_DIR`` that the export did not write (``train/`` above all, where resume
looks for checkpoints) are hard-linked (or copied) into it, then the old directory is renamed aside,
the new one renamed into place and the old one removed. A kill at any moment leaves either the old
or the new directory under ``MODEL_DIR``, never a mix; in the instant between the two renames
``MODEL_DIR`` is absent and the next :func:`check_out_dir` renames the old one back.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from connectome.errors import UserInputError

MODEL_JSON = "model.json"
_STAGING = ".{name}.export-{tag}"
_ASIDE = ".{name}.replaced-{tag}"


def is_finished_model_dir(path: str | Path) -> bool:
    """True when ``path`` holds an exported model (its ``model.json``)."""
    return (Path(path) / MODEL_JSON).is_file()


def recover_interrupted_export(out: str | Path) -> None:
    """Put back a model directory left renamed aside by an export killed between its two renames."""
    out = Path(out)
    if out.exists() or not out.parent.is_dir():
        return
    asides = sorted(out.parent.glob(_ASIDE.format(name=out.name, tag="*")), key=lambda p: p.stat().st_mtime)
    if asides:
        try:
            os.rename(asides[-1], out)
        except OSError:  # another rank put it back first
            if not out.is_dir():
                raise


def check_out_dir(out: str | Path, overwrite: bool = False, option: str = "--out") -> Path:
    """The checks on ``--out`` before any training: not a file; not a finished model unless ``overwrite``."""
    out = Path(out)
    recover_interrupted_export(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{option} {out}: exists and is not a directory")
    if not overwrite and is_finished_model_dir(out):
        raise UserInputError(
            f"{option} {out}: already holds a finished model ({MODEL_JSON}); pass --overwrite to "
            f"replace it or choose another {option}"
        )
    return out


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry_over(old: Path, new: Path) -> None:
    """Entries of ``old`` the export did not write (``train/`` ...) into ``new``, as hard links."""
    for entry in old.iterdir():
        target = new / entry.name
        if target.exists() or target.is_symlink() or entry.name.startswith(f".{MODEL_JSON}.tmp"):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(target))


def publish_model_dir(staged: str | Path, out: str | Path) -> Path:
    """Replace ``out`` by the complete directory ``staged`` (a sibling), keeping ``out``'s other entries."""
    staged, out = Path(staged), Path(os.path.abspath(out))
    if not out.exists():
        os.rename(staged, out)
        return out
    _carry_over(out, staged)
    aside = out.with_name(_ASIDE.format(name=out.name, tag=uuid.uuid4().hex[:12]))
    os.rename(out, aside)
    try:
        os.rename(staged, out)
    except BaseException:
        os.rename(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return out


@contextmanager
def staged_model_dir(out: str | Path) -> Iterator[Path]:
    """Write the model into the yielded temporary sibling of ``out``; on a clean exit it replaces
    ``out`` (see the module doc), on an exception it is removed and ``out`` is left as it was::

        with staged_model_dir(out) as tmp:
            write_model_dir(tmp, arrays, doc)
            write_model_card(tmp)
    """
    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(_STAGING.format(name=out.name, tag=f"{os.getpid()}-{uuid.uuid4().hex[:8]}"))
    staged.mkdir()
    try:
        yield staged
        publish_model_dir(staged, out)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def run_summary(out: str | Path, result, seconds: float, validation: dict) -> dict:
    """What a trainer returns on rank 0 (printed by ``connectome train KIND``): the model
    directory, steps, ranks, wall time, validation figures and the per-rank weight digests."""
    return {
        "model_dir": str(out),
        "steps": result.steps,
        "ranks": result.ranks,
        "seconds": seconds,
        "validation": validation,
        "rank_weight_digests": result.rank_weight_digests,
    }
