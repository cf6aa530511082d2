"""The command table (issue 22): one declaration per command builds both the CLI and the pipeline
registry, and the CLI is unchanged by the move to the table — every (sub)command's options and
``--help`` text equal the snapshot taken from the hand-written parser before the move."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from connectome.commands.spec import Command, Group
from connectome.commands.table import ENTRIES

SNAPSHOT = Path(__file__).parent / "snapshots" / "cli_help_before_command_table.json"
NEW_COMMANDS = {
    "skeletonize",
    "review",
    "review plan",
    "review import",
    "review decide",
    "review open",
    "review apply",
}  # added after the snapshot
#: choices added to an option after the snapshot (command, dest) -> the new choices, appended
NEW_CHOICES = {("synth", "preset"): ["newbrain"]}  # issue 23: the held-out new-brain look
#: options added to a command after the snapshot: command -> the new options' dests (their help
#: text widens the command's --help, so that is not compared)
NEW_OPTIONS = {
    "train vessel": {"init", "corrections"},
    "train synapse": {"init", "corrections"},
    "train boundary": {"init", "corrections"},
    "train ffn": {"init", "corrections"},
}  # issue 23: fine-tuning on review corrections
#: option fields changed after the snapshot: (command, dest) -> the new values
CHANGED_OPTIONS = {
    (f"train {k}", "data"): {"required": False, "default": "[]"} for k in ("vessel", "synapse", "boundary", "ffn")
}  # --data optional with --init


def _describe(parser: argparse.ArgumentParser, words=(), out=None) -> dict:
    out = {} if out is None else out
    opts = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                _describe(sub, words + (name,), out)
            continue
        opts.append(
            {
                "flags": list(a.option_strings),
                "dest": a.dest,
                "nargs": a.nargs,
                "required": a.required,
                "choices": list(a.choices) if a.choices else None,
                "default": a.default if isinstance(a.default, (int, float, str, bool, type(None))) else repr(a.default),
                "metavar": a.metavar if not isinstance(a.metavar, tuple) else list(a.metavar),
                "help": a.help,
            }
        )
    out[" ".join(words)] = {"options": opts, "help": parser.format_help()}
    return out


@pytest.fixture(scope="module")
def now():
    import os

    from connectome.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # the snapshot's terminal width
    try:
        return _describe(build_parser())
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def test_every_command_has_the_same_options_and_help_as_before(now):
    before = json.loads(SNAPSHOT.read_text())
    assert set(before) - set(now) == set(), "commands disappeared"
    assert set(now) - set(before) == NEW_COMMANDS
    for words, want in before.items():
        widened = {dest: extra for (w, dest), extra in NEW_CHOICES.items() if w == words}
        for opt in want["options"]:
            if opt["dest"] in widened:
                opt["choices"] = opt["choices"] + widened[opt["dest"]]
            opt.update(CHANGED_OPTIONS.get((words, opt["dest"]), {}))
        added = NEW_OPTIONS.get(words, set())
        got = [o for o in now[words]["options"] if o["dest"] not in added]
        assert {o["dest"] for o in now[words]["options"]} - {o["dest"] for o in got} == added, words
        assert got == want["options"], words
        if words and not widened and not added:  # the top-level help also lists the new commands
            assert now[words]["help"] == want["help"], words
    top = now[""]["help"]
    for line in before[""]["help"].splitlines():
        assert line in top


def test_table_builds_the_pipeline_registry():
    from connectome.pipeline import STAGES

    stages = [e for e in ENTRIES if isinstance(e, Command) and e.is_stage]
    assert list(STAGES) == [c.name for c in stages]
    for c in stages:
        sdef = STAGES[c.name]
        assert sdef.command == c.words and sdef.kind == c.kind
        assert set(sdef.options) == {a.name for a in c.args if a.pipeline}
        if c.config:
            assert sdef.config() is c.load_config_class()


def test_table_entries_are_consistent():
    groups = {e.words for e in ENTRIES if isinstance(e, Group)}
    seen: set = set()
    for e in ENTRIES:
        assert e.words not in seen, e.words
        seen.add(e.words)
        assert e.words[:-1] == () or e.words[:-1] in groups, e.words
        if isinstance(e, Command):
            assert callable(e.load_run()), e.run  # every run function exists
            if e.config:
                assert isinstance(e.load_config_class(), type)
            if e.is_stage:  # a stage's config-key options point at real config fields
                import dataclasses
                import typing

                for key in e.option_of_key():
                    node = e.load_config_class()
                    for part in key.split("."):
                        assert part in {f.name for f in dataclasses.fields(node)}, (e.name, key)
                        node = typing.get_type_hints(node)[part]
