"""A sweep's search space: a YAML file whose parameters are dotted field names of one stage's
typed config (no vocabulary of its own), validated against that config's dataclass.

::

    stage: segment                  # segment | train-ffn | train-vessel
    base_config: base.yaml          # optional: the stage config every trial starts from
    fixed: {inference.max_fovs_per_object: 200}   # optional: dotted field -> value, every trial
    parameters:                     # dotted field -> range or choices
      inference.move_threshold: [0.5, 0.95]          # two numbers: a range (ints -> int range)
      trainer.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}   # log-uniform range
      trainer.optimizer: [adam, sgd]                 # anything else: the choices
      model.depth: {choices: [2, 4]}                 # explicit choices
    objective: -arand               # -arand | -voi | iou, or [-]SECTION.KEY of evaluation.json
    validation:                     # where a trial's result is scored (`connectome evaluate`)
      workspace: ws                 # a workspace with raw (and vessel_mask)
      truth: synth                  # a `connectome synth` folder
      model: model_dir              # segment: the FFN model (--model)
    train:                          # train-* stages
      data: [synth1]                # --data folders
      val: [synth2]                 # --val folders
      segment_config: seg.yaml      # train-ffn: config of the validation `connectome segment`
      mask_config: mask.yaml        # train-vessel: config of the validation `connectome mask-vessels`
    budget: {steps: 50, seconds: 600}   # per trial: trainer.steps (train-*), wall-clock limit
    search: {random_state: 42, n_initial_points: 5}

Relative paths are relative to the space file. Every mistake (unknown key or field, a section
named as a field, an empty or inverted range, choices outside a ``Literal``, a range end the
config rejects) is a :class:`UserInputError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, get_args, get_origin

from connectome.errors import UserInputError

#: stage -> (module, config class, the workspace arrays a trial copies)
STAGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "segment": ("ffn.segment", "SegmentConfig", ("raw", "vessel_mask", "boundary")),
    "train-ffn": ("ffn.train", "FFNTrainConfig", ("raw", "vessel_mask", "boundary")),
    "train-vessel": ("unet.train", "VesselTrainConfig", ("raw",)),
}

#: objective aliases -> (section, key) of ``evaluation.json``
ALIASES = {
    "arand": ("segmentation", "arand_error"),
    "voi": ("segmentation", "voi_sum"),
    "iou": ("vessels", "iou"),
    "vessel_iou": ("vessels", "iou"),
}
#: metrics where lower is better: maximising them as they are is refused
LOWER_IS_BETTER = {
    "arand_error",
    "voi_sum",
    "voi_split",
    "voi_merge",
    "unlabelled_fraction",
    "split_truth_objects",
    "merger_segments",
    "residual_median_px",
    "residual_max_px",
    "fraction_over_flag",
}
STAGE_SECTION = {"segment": "segmentation", "train-ffn": "segmentation", "train-vessel": "vessels"}

_TOP_KEYS = {"stage", "base_config", "fixed", "parameters", "objective", "validation", "train", "budget", "search"}
_SECTION_KEYS = {
    "validation": {"workspace", "truth", "model", "evaluate_config"},
    "train": {"data", "val", "segment_config", "mask_config"},
    "budget": {"steps", "seconds"},
    "search": {"random_state", "n_initial_points", "surrogate_model"},
}


@dataclass(frozen=True)
class Param:
    """One tunable field: a range (``low``/``high``, optionally log-uniform) or ``choices``."""

    name: str
    kind: Literal["int", "float", "bool", "str"]
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: Optional[tuple] = None

    def hp_spec(self):
        """The value ``HpProblem.add_hyperparameter`` takes."""
        if self.choices is not None:
            return list(self.choices)
        if self.log:
            return (self.low, self.high, "log-uniform")
        return (self.low, self.high)

    def coerce(self, value):
        """A value from DeepHyper (numpy scalar, CSV string) as the config field's type."""
        if self.kind == "bool":
            return value if isinstance(value, bool) else str(value).lower() in ("true", "1")
        if self.kind == "int":
            return int(round(float(value)))
        if self.kind == "float":
            return float(value)
        return str(value)

    def contains(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        return value is not None and not isinstance(value, bool) and self.low <= value <= self.high


@dataclass(frozen=True)
class Space:
    path: Path
    stage: str
    config_cls: type
    #: the stage config every trial starts from (base_config with ``fixed`` applied), nested dict
    base: dict
    params: tuple[Param, ...]
    objective: str  # as written, e.g. "-arand"
    section: str
    key: str
    sign: float
    validation: dict
    train: dict
    steps: Optional[int]
    seconds: Optional[float]
    random_state: int = 42
    n_initial_points: Optional[int] = None
    surrogate_model: str = "ET"
    inputs: tuple[str, ...] = field(default=())

    # ------------------------------------------------------------------------------------------
    def problem(self):
        from deephyper.hpo import HpProblem

        problem = HpProblem()
        for p in self.params:
            problem.add_hyperparameter(p.hp_spec(), p.name)
        return problem

    def trial_config(self, values: Mapping[str, Any]) -> dict:
        """The full stage config (nested dict) of one trial: the base config, the budget's
        steps, then the trial's values."""
        import copy

        data = copy.deepcopy(self.base)
        if self.steps is not None:
            _set(data, "trainer.steps", self.steps)
        for p in self.params:
            _set(data, p.name, p.coerce(values[p.name]))
        return data

    def base_point(self) -> Optional[dict]:
        """The base config's values of the parameters, if every one lies in the space."""
        from connectome.config import config_from_dict, config_to_dict

        full = config_to_dict(config_from_dict(self.config_cls, self.base))
        point = {}
        for p in self.params:
            v = _get(full, p.name)
            if not p.contains(v):
                return None
            point[p.name] = v
        return point

    def identity(self) -> dict:
        """What a results.csv depends on (a rerun into the same --out must match it)."""
        return {
            "stage": self.stage,
            "base": self.base,
            "params": [dataclasses.asdict(p) for p in self.params],
            "objective": self.objective,
            "validation": self.validation,
            "train": self.train,
            "steps": self.steps,
            "seconds": self.seconds,
            "random_state": self.random_state,
            "n_initial_points": self.n_initial_points,
            "surrogate_model": self.surrogate_model,
        }

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# the config dataclass as a tree of dotted names


def _set(data: dict, dotted: str, value) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _get(data: Mapping, dotted: str):
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    return node


def field_type(cls: type, dotted: str, where: str):
    """The type of the dotted field ``dotted`` of dataclass ``cls``; unknown -> UserInputError."""
    tp: Any = cls
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(tp):
            raise UserInputError(
                f"{where}: unknown field '{dotted}' in {cls.__name__} ('{'.'.join(parts[:i])}' has no fields)"
            )
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp) if f.init]
        if part not in names:
            scope = ".".join(parts[:i]) or cls.__name__
            raise UserInputError(
                f"{where}: unknown field '{dotted}' in {cls.__name__} (known in {scope}: {', '.join(sorted(names))})"
            )
        tp = hints[part]
    return tp


def _scalar_kind(tp) -> tuple[str, Optional[tuple]]:
    """('int'|'float'|'bool'|'str', allowed literal values or None); ('', None) if not scalar."""
    origin = get_origin(tp)
    if origin is typing.Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        return _scalar_kind(args[0]) if len(args) == 1 else ("", None)
    if origin is Literal:
        vals = get_args(tp)
        kinds = {type(v) for v in vals}
        kind = {str: "str", int: "int", bool: "bool", float: "float"}.get(kinds.pop(), "") if len(kinds) == 1 else ""
        return kind, tuple(vals)
    return {bool: "bool", int: "int", float: "float", str: "str"}.get(tp, ""), None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_param(cls: type, name: str, spec, where: str) -> Param:
    tp = field_type(cls, name, where)
    at = f"{where}: parameters.{name}"
    if dataclasses.is_dataclass(tp):
        raise UserInputError(
            f"{at}: is a section of {cls.__name__}, not a field; name one of its fields "
            f"(e.g. {name}.{dataclasses.fields(tp)[0].name})"
        )
    kind, allowed = _scalar_kind(tp)
    if not kind:
        raise UserInputError(
            f"{at}: only scalar fields (bool, int, float, str, one of a Literal) can be searched; this one is {tp}"
        )
    low = high = None
    log = False
    choices = None
    if isinstance(spec, Mapping):
        extra = set(spec) - {"low", "high", "log", "choices"}
        if extra:
            raise UserInputError(f"{at}: unknown key '{sorted(extra)[0]}' (expected low/high[/log] or choices)")
        if "choices" in spec:
            if set(spec) != {"choices"}:
                raise UserInputError(f"{at}: give either choices or low/high, not both")
            choices = spec["choices"]
        elif {"low", "high"} <= set(spec):
            low, high, log = spec["low"], spec["high"], spec.get("log", False)
            if not isinstance(log, bool):
                raise UserInputError(f"{at}: log expects true or false, got {log!r}")
        else:
            raise UserInputError(f"{at}: expected {{low: L, high: H}} or {{choices: [...]}}, got {dict(spec)!r}")
    elif isinstance(spec, list):
        if len(spec) == 2 and all(_is_number(v) for v in spec) and kind in ("int", "float") and allowed is None:
            low, high = spec
        else:
            choices = spec
    else:
        raise UserInputError(
            f"{at}: expected a range [low, high], {{low, high, log}} or a list of choices, got {spec!r}"
        )

    if choices is not None:
        if not isinstance(choices, list) or not choices:
            raise UserInputError(f"{at}: empty choices (give at least one value)")
        out = []
        for v in choices:
            ok = {
                "bool": isinstance(v, bool),
                "int": isinstance(v, int) and not isinstance(v, bool),
                "float": _is_number(v),
                "str": isinstance(v, str),
            }[kind]
            if not ok or (allowed is not None and v not in allowed):
                want = f"one of {', '.join(repr(a) for a in allowed)}" if allowed is not None else f"a {kind}"
                raise UserInputError(f"{at}: choice {v!r} is not {want}")
            out.append(float(v) if kind == "float" else v)
        if len(set(out)) != len(out):
            raise UserInputError(f"{at}: repeated choices {choices!r}")
        return Param(name, kind, choices=tuple(out))

    if kind not in ("int", "float") or allowed is not None:
        raise UserInputError(f"{at}: a {kind} field takes a list of choices, not a range")
    if not (_is_number(low) and _is_number(high)):
        raise UserInputError(f"{at}: range ends must be numbers, got {low!r} and {high!r}")
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise UserInputError(f"{at}: an int field needs an int range, got [{low}, {high}]")
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise UserInputError(f"{at}: empty range [{low}, {high}] (need low < high)")
    if log and not low > 0:
        raise UserInputError(f"{at}: a log range needs low > 0, got {low}")
    if kind == "float":
        low, high = float(low), float(high)
    return Param(name, kind, low, high, log)


# ---------------------------------------------------------------------------------------------


def _mapping(doc: Mapping, key: str, where: str) -> dict:
    value = doc.get(key) or {}
    if not isinstance(value, Mapping):
        raise UserInputError(f"{where}: '{key}' expects a mapping, got {value!r}")
    allowed = _SECTION_KEYS.get(key)
    if allowed:
        bad = sorted(set(value) - allowed)
        if bad:
            raise UserInputError(f"{where}: unknown key '{key}.{bad[0]}' (known: {', '.join(sorted(allowed))})")
    return dict(value)


def _path(value, root: Path, where: str, what: str, kind: str = "dir") -> str:
    if not isinstance(value, str) or not value:
        raise UserInputError(f"{where}: '{what}' expects a path, got {value!r}")
    p = Path(value)
    p = p if p.is_absolute() else root / p
    if kind == "dir" and not p.is_dir():
        raise UserInputError(f"{where}: '{what}': {p} is not a folder")
    if kind == "file" and not p.is_file():
        raise UserInputError(f"{where}: '{what}': {p} not found")
    return str(p.resolve())


def _load_yaml_mapping(path: Path, what: str) -> dict:
    from connectome.inputs import load_yaml

    doc = load_yaml(path, what)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise UserInputError(f"{path}: expected a mapping at the top level, got {type(doc).__name__}")
    return doc


def load_space(path: str | Path) -> Space:
    """Read and validate a space file (every error: UserInputError naming the file and key)."""
    from connectome.config import config_from_dict

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"SPACE {path}: file not found")
    where = str(path)
    root = path.resolve().parent
    doc = _load_yaml_mapping(path, "the space")
    bad = sorted(set(doc) - _TOP_KEYS)
    if bad:
        raise UserInputError(f"{where}: unknown key '{bad[0]}' (known: {', '.join(sorted(_TOP_KEYS))})")
    stage = doc.get("stage")
    if stage not in STAGES:
        raise UserInputError(f"{where}: 'stage' expects one of {', '.join(STAGES)}, got {stage!r}")
    module, clsname, inputs = STAGES[stage]
    cls = getattr(importlib.import_module(module), clsname)

    # base config (+ fixed fields): validated by the stage's own loader
    base: dict = {}
    if doc.get("base_config") is not None:
        bpath = Path(_path(doc["base_config"], root, where, "base_config", "file"))
        base = _load_yaml_mapping(bpath, "the base config")
        config_from_dict(cls, base, source=f"{where}: base_config {bpath}")
    fixed = _mapping(doc, "fixed", where)
    for name, value in fixed.items():
        tp = field_type(cls, str(name), f"{where}: fixed")
        if dataclasses.is_dataclass(tp):
            raise UserInputError(f"{where}: fixed.{name}: is a section of {cls.__name__}; name one of its fields")
        _set(base, str(name), value)
    config_from_dict(cls, base, source=f"{where}: base_config + fixed")

    # parameters
    raw_params = doc.get("parameters")
    if not isinstance(raw_params, Mapping) or not raw_params:
        raise UserInputError(
            f"{where}: 'parameters' expects a non-empty mapping of dotted field names "
            f"of {cls.__name__} to ranges or choices"
        )
    params = tuple(parse_param(cls, str(name), spec, where) for name, spec in raw_params.items())
    names = [p.name for p in params]
    for a in names:
        for b in names:
            if b.startswith(a + "."):
                raise UserInputError(f"{where}: parameters '{a}' and '{b}' overlap")
    # every range end and choice alone on the base config must be a valid config
    for p in params:
        for v in p.choices if p.choices is not None else (p.low, p.high):
            trial = json.loads(json.dumps(base))
            _set(trial, p.name, p.coerce(v))
            try:
                config_from_dict(cls, trial, source="trial")
            except UserInputError as exc:
                raise UserInputError(
                    f"{where}: parameters.{p.name}: value {p.coerce(v)!r} is not accepted by "
                    f"{cls.__name__} ({str(exc).removeprefix('trial: ')})"
                ) from None

    # objective
    obj = doc.get("objective")
    if not isinstance(obj, str) or not obj.strip():
        raise UserInputError(f"{where}: 'objective' expects e.g. -arand, -voi, iou or [-]SECTION.KEY, got {obj!r}")
    obj = obj.strip()
    sign = -1.0 if obj.startswith("-") else 1.0
    name = obj.lstrip("+-").strip()
    if name in ALIASES:
        section, key = ALIASES[name]
    elif "." in name:
        section, key = name.split(".", 1)
    else:
        raise UserInputError(
            f"{where}: objective '{obj}': unknown metric (use -arand, -voi, iou or "
            f"[-]SECTION.KEY of evaluation.json, e.g. -segmentation.voi_merge)"
        )
    if section != STAGE_SECTION[stage]:
        raise UserInputError(
            f"{where}: objective '{obj}': stage {stage} is scored in section "
            f"'{STAGE_SECTION[stage]}' of evaluation.json, not '{section}'"
        )
    if sign > 0 and key in LOWER_IS_BETTER:
        raise UserInputError(
            f"{where}: objective '{obj}': lower is better for {key}; DeepHyper maximises, write '-{name}'"
        )

    # validation, training inputs
    val = _mapping(doc, "validation", where)
    validation = {
        "workspace": _path(val.get("workspace"), root, where, "validation.workspace"),
        "truth": _path(val.get("truth"), root, where, "validation.truth"),
    }
    if not (Path(validation["workspace"]) / "volume.zarr").is_dir():
        raise UserInputError(
            f"{where}: 'validation.workspace': {validation['workspace']} is not a connectome workspace (no volume.zarr)"
        )
    if not (Path(validation["truth"]) / "truth.zarr").is_dir():
        raise UserInputError(
            f"{where}: 'validation.truth': {validation['truth']} is not a `connectome synth` folder (no truth.zarr)"
        )
    if val.get("evaluate_config") is not None:
        validation["evaluate_config"] = _path(val["evaluate_config"], root, where, "validation.evaluate_config", "file")
    if stage == "segment":
        if val.get("model") is not None:
            validation["model"] = _path(val["model"], root, where, "validation.model")
    elif "model" in val:
        raise UserInputError(f"{where}: 'validation.model' is for stage segment (a {stage} trial trains its own)")
    tr = _mapping(doc, "train", where)
    train: dict = {}
    if stage.startswith("train-"):
        for k in ("data", "val"):
            v = tr.get(k, [])
            v = [v] if isinstance(v, str) else v
            if not isinstance(v, list):
                raise UserInputError(f"{where}: 'train.{k}' expects a list of folders, got {v!r}")
            train[k] = [_path(d, root, where, f"train.{k}") for d in v]
        if not train["data"]:
            raise UserInputError(f"{where}: 'train.data' expects at least one `connectome synth` folder")
        if stage == "train-ffn" and not train["val"]:
            raise UserInputError(f"{where}: 'train.val' expects at least one held-out folder (train ffn needs --val)")
        for k in ("segment_config", "mask_config"):
            if tr.get(k) is not None:
                train[k] = _path(tr[k], root, where, f"train.{k}", "file")
    elif tr:
        raise UserInputError(f"{where}: 'train' is for train-* stages, not {stage}")

    budget = _mapping(doc, "budget", where)
    steps, seconds = budget.get("steps"), budget.get("seconds")
    if steps is not None:
        if not stage.startswith("train-"):
            raise UserInputError(f"{where}: 'budget.steps' is for train-* stages (trainer.steps)")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise UserInputError(f"{where}: 'budget.steps' expects a positive int, got {steps!r}")
        if any(p.name == "trainer.steps" for p in params):
            raise UserInputError(f"{where}: 'budget.steps' and parameters.trainer.steps both set the steps")
    if seconds is not None and (not _is_number(seconds) or not seconds > 0):
        raise UserInputError(f"{where}: 'budget.seconds' expects a positive number, got {seconds!r}")
    search = _mapping(doc, "search", where)
    rs = search.get("random_state", 42)
    if not isinstance(rs, int) or isinstance(rs, bool) or rs < 0:
        raise UserInputError(f"{where}: 'search.random_state' expects an int >= 0, got {rs!r}")
    nip = search.get("n_initial_points")
    if nip is not None and (not isinstance(nip, int) or isinstance(nip, bool) or nip < 1):
        raise UserInputError(f"{where}: 'search.n_initial_points' expects a positive int, got {nip!r}")
    sm = search.get("surrogate_model", "ET")
    if sm not in ("ET", "RF", "GP", "GBRT", "DUMMY"):
        raise UserInputError(f"{where}: 'search.surrogate_model' expects ET, RF, GP, GBRT or DUMMY, got {sm!r}")

    return Space(
        path.resolve(),
        stage,
        cls,
        base,
        params,
        obj,
        section,
        key,
        sign,
        validation,
        train,
        steps,
        float(seconds) if seconds is not None else None,
        rs,
        nip,
        sm,
        inputs,
    )
