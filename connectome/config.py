"""Typed, frozen stage configs, loadable from YAML.

Every stage has one frozen dataclass config (nested dataclasses allowed) with defaults. A YAML
file given with ``--config`` overrides fields; unknown keys and wrong types are rejected with a
message that names the file and the key, e.g.::

    config.yaml: unknown key 'blokwise' in SmoothConfig (known: blockwise, sigma_nm, ...)
    config.yaml: 'blockwise.block_shape_zyx' expects a list of 3 ints, got 'big'

Supported field types: bool, int, float, str, ``Literal[...]``, ``Optional[T]``,
``tuple[T, ...]``, ``tuple[T, T, T]`` and nested config dataclasses.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, get_args, get_origin

from connectome.errors import UserInputError

if typing.TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


#: set while a config from user input is built (:func:`config_from_dict`, :func:`load_config`)
_USER_INPUT: contextvars.ContextVar[bool] = contextvars.ContextVar("connectome_user_config", default=False)


@dataclasses.dataclass(frozen=True)
class BlockwiseConfig:
    """How a stage cuts the volume into blocks and how hard it retries."""

    #: Write-box shape of one block (z, y, x) in voxels; also the output chunk shape.
    block_shape_zyx: tuple[int, int, int] = (32, 256, 256)
    #: A block that raises is retried this many times before the stage fails.
    max_retries: int = 2

    def __post_init__(self) -> None:
        if any(b <= 0 for b in self.block_shape_zyx):
            raise ValueError(f"block_shape_zyx must be positive, got {list(self.block_shape_zyx)}")
        from connectome.resources import MIN_BLOCK_VOXELS

        # a user's config (file, option, pipeline) is held to the resource limits; code and tests
        # may build tiny blocks on purpose
        if _USER_INPUT.get() and math.prod(self.block_shape_zyx) < MIN_BLOCK_VOXELS:
            raise ValueError(
                f"block_shape_zyx {list(self.block_shape_zyx)} has {math.prod(self.block_shape_zyx)} "
                f"voxels per block; at least {MIN_BLOCK_VOXELS} (e.g. [1, 32, 32] or [16, 16, 16]) "
                "keep per-block overhead from dominating"
            )
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


class _ConfigTypeError(Exception):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


class _NotFinite(_ConfigTypeError):
    """A float that is nan or inf: reported as such, even inside ``Optional[float]``."""


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}s"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_describe(args[0])}s"
        return "a list (" + ", ".join(_describe(a) for a in args) + ")"
    if origin is typing.Union:
        members = [a for a in get_args(tp) if a is not type(None)]
        return " or ".join(_describe(a) for a in members) + " or null"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    bad = _ConfigTypeError(key, f"'{key}' expects {_describe(tp)}, got {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise bad
        return _build(tp, value, prefix=key + ".")
    if origin is typing.Union:
        if value is None and type(None) in get_args(tp):
            return None
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except _NotFinite:
                raise
            except _ConfigTypeError:
                pass
        raise bad
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise bad
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _NotFinite(key, f"{key} = {value!r}: expected a finite number")
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def _build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise _ConfigTypeError(
            prefix + str(unknown[0]),
            f"unknown key {prefix + str(unknown[0])!r} in {cls.__name__} (known: {', '.join(sorted(fields))})",
        )
    kwargs = {name: _convert(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise _ConfigTypeError(prefix.rstrip("."), f"{cls.__name__}: {exc}") from None


def config_from_dict(cls: type[T], data: Mapping[str, Any] | None, source: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise UserInputError(f"{source}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    token = _USER_INPUT.set(True)
    try:
        return _build(cls, data)
    except _ConfigTypeError as exc:
        raise UserInputError(f"{source}: {exc.message}") from None
    finally:
        _USER_INPUT.reset(token)


def load_config(
    cls: type[T],
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    options: Mapping[str, str] | None = None,
) -> T:
    """Load a stage config from a YAML file (or defaults when ``path`` is None).

    ``overrides`` (from command-line options) are applied on top of the file, key by key
    (nested keys as dotted names, e.g. ``{"blockwise.block_shape_zyx": [16, 128, 128]}``).
    An error caused by an override names its option (``options`` maps dotted key -> option, e.g.
    ``{"threshold": "--threshold"}``), otherwise the file (or "defaults").
    """
    from connectome.inputs import load_yaml

    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise UserInputError(f"{p}: config file not found")
        loaded = load_yaml(p, "config")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserInputError(
                f"{p}: expected a mapping of {cls.__name__} fields at the top level, got {type(loaded).__name__}"
            )
        data = loaded
    import copy

    base = copy.deepcopy(data)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        return config_from_dict(cls, data, source=source)
    except UserInputError:
        culprit = _culprit_override(cls, base, overrides or {})
        if culprit is None:
            raise
        token = _USER_INPUT.set(True)
        try:
            _build(cls, data)
        except _ConfigTypeError as exc:
            raise UserInputError(f"{(options or {}).get(culprit, culprit)}: {exc.message}") from None
        finally:
            _USER_INPUT.reset(token)
        raise  # pragma: no cover - the build failed just above


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _culprit_override(cls: type, base: dict, overrides: Mapping[str, Any]) -> str | None:
    """The first override that turns a valid ``base`` (file + defaults) into an invalid config."""
    import copy

    token = _USER_INPUT.set(True)
    try:
        try:
            _build(cls, base)
        except _ConfigTypeError:
            return None  # the file itself is bad: report the file
        for dotted, value in overrides.items():
            trial = copy.deepcopy(base)
            _set_dotted(trial, dotted, value)
            try:
                _build(cls, trial)
            except _ConfigTypeError:
                return dotted
        return None
    finally:
        _USER_INPUT.reset(token)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
