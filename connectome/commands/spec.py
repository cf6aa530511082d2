"""The shape of a command declaration: :class:`Command` (one CLI command / pipeline stage),
:class:`Arg` (one of its options) and :class:`Group` (a command word with sub-commands, such as
``train``). Declarations hold no behaviour: the run function and the typed config are named by
``"module:attribute"`` strings and imported only when the command runs (so building the parser
stays fast and the table imports no stage)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

#: pipeline option kinds (how a ``pipelines/*.yaml`` value is checked and written on the command line)
OPTION_KINDS = ("str", "path", "int", "float", "bool", "zyx", "yx", "range", "list")
#: how a pipeline stage is launched by `connectome run` / PBS job scripts
STAGE_KINDS = ("blockwise", "model", "single")


@dataclass(frozen=True)
class Arg:
    """One command-line argument: ``flags`` and ``kwargs`` as for ``argparse.add_argument``.

    ``pipeline``: the option kind when a pipeline may set it (``options: {NAME: value}``), None
    when it is command-line only. ``key``: the config key it overrides (``blockwise.block_shape_zyx``),
    so a bad value is reported under the option's name rather than the config's."""

    flags: tuple[str, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    pipeline: Optional[str] = None
    key: Optional[str] = None

    def __post_init__(self):
        if self.pipeline is not None and self.pipeline not in OPTION_KINDS:
            raise ValueError(f"{self.flags}: pipeline kind {self.pipeline!r} not in {OPTION_KINDS}")

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    @property
    def name(self) -> str:
        """The option's name in a pipeline (``--block-shape`` -> ``block-shape``; positional: its dest)."""
        return self.flags[0].lstrip("-") if not self.positional else self.kwargs.get("dest", self.flags[0])

    @property
    def required(self) -> bool:
        return self.positional or bool(self.kwargs.get("required"))


def arg(*flags: str, pipeline: Optional[str] = None, key: Optional[str] = None, **kwargs: Any) -> Arg:
    return Arg(tuple(flags), kwargs, pipeline, key)


@dataclass(frozen=True)
class Command:
    """One command (``words`` after ``connectome``).

    ``parents``: shared option sets — ``common`` (-v/-q) and ``stage`` (--config, --executor,
    --workers, --scheduler-file, --progress, --restart: the blockwise execution options).
    ``kind`` (blockwise | model | single) makes the command a pipeline stage; ``config`` names its
    typed config class; ``mpi``: it may run as several ranks under mpiexec."""

    words: tuple[str, ...]
    help: str
    run: str
    args: tuple[Arg, ...] = ()
    description: Optional[str] = None
    parents: tuple[str, ...] = ("common",)
    kind: Optional[str] = None
    config: Optional[str] = None
    mpi: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind is not None and self.kind not in STAGE_KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r} not in {STAGE_KINDS}")
        names = [a.name for a in self.args]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate option in {names}")

    @property
    def name(self) -> str:
        """The pipeline stage name: the words joined by '-' (``train vessel`` -> ``train-vessel``)."""
        return "-".join(self.words)

    @property
    def is_stage(self) -> bool:
        return self.kind is not None

    @property
    def takes_workspace(self) -> bool:
        return any(a.flags[0] == "--workspace" for a in self.args)

    @property
    def takes_executor(self) -> bool:
        return "stage" in self.parents

    @property
    def takes_progress(self) -> bool:
        return "stage" in self.parents or any(a.flags[0] == "--progress" for a in self.args)

    def option_of_key(self) -> dict[str, str]:
        """Config key -> the option that overrides it (for error messages)."""
        return {a.key: a.flags[0] for a in self.args if a.key}

    def load_config_class(self) -> Optional[type]:
        return resolve(self.config) if self.config else None

    def load_run(self):
        return resolve(self.run)


@dataclass(frozen=True)
class Group:
    """A command word whose sub-commands are the :class:`Command` entries starting with it."""

    words: tuple[str, ...]
    help: str
    dest: str
    metavar: str
    description: Optional[str] = None


def resolve(ref: str) -> Any:
    """``"package.module:attr"`` -> the attribute (imports the module)."""
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
