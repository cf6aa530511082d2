"""The ``connectome`` command line: a dispatcher over the command table.

Every command is declared once in :mod:`connectome.commands.table` (options, typed config, pipeline
kind, run function); the parser is built from it (:mod:`connectome.commands.parser`) and each
command runs as ``cmd_<words>`` of this module (``cmd_import``, ``cmd_train_vessel``, ...), which
imports its run function only when called.

Exit codes: 0 done; 2 bad input or usage (one line on stderr naming what is wrong);
1 internal failure (a block kept failing, a bug). See ``shared/CONTRACT.md``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import Callable, Sequence

from connectome.commands.parser import build_parser as _build_parser
from connectome.commands.spec import Command
from connectome.commands.table import ENTRIES
from connectome.errors import ConnectomeError, UserInputError

log = logging.getLogger("connectome")


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(ENTRIES)


def _attr_name(command: Command) -> str:
    return "cmd_" + "_".join(command.words).replace("-", "_")


def _lazy(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args):
        return command.load_run()(args)

    run.__name__ = run.__qualname__ = _attr_name(command)
    run.__doc__ = f"``connectome {' '.join(command.words)}``: runs {command.run}"
    return run


for _c in ENTRIES:
    if isinstance(_c, Command):
        globals()[_attr_name(_c)] = _lazy(_c)


def _dispatch(command: Command) -> Callable[[argparse.Namespace], int]:
    """The module attribute ``cmd_<words>`` (looked up at call time, so it can be replaced)."""
    return globals()[_attr_name(command)]


def main(argv: Sequence[str] | None = None) -> int:
    from connectome.logsetup import setup_logging

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        setup_logging(args.verbose, args.quiet)
        if args.verbose < 2:
            # TensorFlow's C++ start-up chatter (CPU features, oneDNN notes) would break the
            # one-line-on-stderr rule of exit code 2; it is imported later, by the stages
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return int(_dispatch(args._command)(args) or 0)
    except UserInputError as exc:
        print(f"connectome: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except ConnectomeError as exc:
        print(f"connectome: failed: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("connectome: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            return _internal(exc)
        # a workspace, output or input the user cannot write (or read): bad input, not a bug
        where = exc.filename or "a file"
        print(
            f"connectome: error: {where}: {exc.strerror or exc}; make it writable (or readable) for this user, "
            "or choose another --workspace / output",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:  # an internal failure
        return _internal(exc)


def _one_line(text: str) -> str:
    """A message as one line: control characters from user input (a key with a newline) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text.strip())


def _internal(exc: BaseException) -> int:
    """An internal failure: full traceback in the log, one line on stderr, exit 1."""
    log.debug("internal error", exc_info=exc)
    print(f"connectome: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
    if os.environ.get("CONNECTOME_DEBUG"):
        raise exc
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
