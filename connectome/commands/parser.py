"""The ``connectome`` argument parser, built from the command table (:mod:`.table`)."""

from __future__ import annotations

import argparse
from typing import Iterable, Union

from connectome import __version__
from connectome.commands.spec import Command, Group
from connectome.errors import UserInputError


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit code 2 (no usage dump)."""

    def error(self, message):  # noqa: D401
        raise UserInputError(f"{self.prog}: {message}")


def _common_options() -> Parser:
    p = Parser(add_help=False)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def _stage_options() -> Parser:
    p = Parser(add_help=False)
    g = p.add_argument_group("execution")
    g.add_argument("--config", metavar="FILE.yaml", help="the stage's typed config (YAML); unknown keys are rejected")
    g.add_argument("--executor", default="local", help="serial | local (default) | dask | mpi")
    g.add_argument("--workers", type=int, default=None, metavar="N", help="worker processes for --executor local")
    g.add_argument("--scheduler-file", metavar="PATH", help="dask scheduler file for --executor dask")
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    g.add_argument("--restart", action="store_true", help="discard this stage's done-markers and recompute every block")
    return p


def build_parser(entries: Iterable[Union[Command, Group]]) -> argparse.ArgumentParser:
    parents = {"common": _common_options(), "stage": _stage_options()}
    parser = Parser(prog="connectome", description="Reconstruct neural circuits from serial-section EM.")
    parser.add_argument("--version", action="version", version=f"connectome {__version__}")
    subs: dict[tuple[str, ...], argparse._SubParsersAction[Parser]]
    subs = {(): parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)}
    for e in entries:
        where = subs[e.words[:-1]]
        if isinstance(e, Group):
            p = where.add_parser(e.words[-1], help=e.help, description=e.description)
            subs[e.words] = p.add_subparsers(dest=e.dest, metavar=e.metavar, parser_class=Parser, required=True)
            continue
        p = where.add_parser(
            e.words[-1], parents=[parents[k] for k in e.parents], help=e.help, description=e.description
        )
        for a in e.args:
            p.add_argument(*a.flags, **a.kwargs)
        p.set_defaults(_command=e, **e.defaults)
    return parser
