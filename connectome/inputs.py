"""Shared validation of user-given values at the boundary: finite numbers and strict YAML.

* :func:`finite_float` / :func:`float_option` — every float a user types (a command-line option,
  one number of a ``Z,Y,X`` list) must be a finite number; ``nan`` and ``inf`` are refused with a
  one-line :class:`UserInputError` naming the option.
* :func:`load_yaml` / :func:`load_yaml_text` — every YAML file a user gives (stage configs,
  pipelines, HPO spaces) is read with a SafeLoader that refuses duplicate mapping keys (plain
  ``yaml.safe_load`` keeps the last one silently), naming the key, the file and the line.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from connectome.errors import UserInputError


def finite_float(text: Any, what: str) -> float:
    """``text`` as a finite float, else :class:`UserInputError` naming ``what``."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserInputError(f"{what}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise UserInputError(f"{what}: expected a finite number, got {text!r}")
    return value


def float_option(text: str) -> float:
    """argparse ``type=`` for float options: refuses non-numbers and nan/inf (argparse names the
    option: ``argument --threshold: expected a finite number, got 'nan'``)."""
    try:
        return finite_float(text, "value")
    except UserInputError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None


# ---------------------------------------------------------------------------------------------
# YAML without duplicate keys


class DuplicateKeyError(Exception):
    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"duplicate key {key!r} (line {line}; first at line {first_line})")
        self.key = key
        self.line = line
        self.first_line = first_line


def _yaml_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """SafeLoader whose mappings refuse a key given twice (merge keys ``<<`` may be overridden)."""

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        hash(key)
                    except TypeError:
                        continue  # the base constructor reports unhashable keys
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        raise DuplicateKeyError(key, line, seen[key])
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


_LOADER = None


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML ``text`` (from ``source``, for messages) refusing duplicate keys."""
    global _LOADER
    import yaml

    if _LOADER is None:
        _LOADER = _yaml_loader()
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise UserInputError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"{source}: not valid YAML ({first})") from None


def load_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Read the YAML file ``path`` (a user's config, pipeline, ...) refusing duplicate keys; every
    problem is a :class:`UserInputError` naming the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{p}: cannot read {what} ({exc})") from None
    return load_yaml_text(text, str(p))
