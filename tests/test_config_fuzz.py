"""Property tests (hypothesis): random configs and option values never crash a stage's loader.

Every stage's typed config is fed random YAML (known keys with values of every type, nan/inf,
huge numbers, nested junk, unknown keys, malformed text), and every stage command is fed random
values for its options on the command line. The promise (CONTRACT: exit codes) is: success, or
exit 2 with one line naming what is wrong — never exit 1 ("internal error")."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectome.cli import main
from connectome.config import load_config
from connectome.errors import UserInputError
from connectome.pipeline import STAGES

SETTINGS = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

CONFIGS = {name: s.config() for name, s in STAGES.items() if s.config is not None}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from([0, -1, 1, 2, 0.5, 1e300, -1e-300, "auto", "", "nan", ".inf"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8,
)


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


@st.composite
def config_data(draw, cls, depth: int = 0):
    """A mapping over ``cls``'s fields (nested dataclasses recurse), sometimes with unknown keys."""
    hints = typing.get_type_hints(cls)
    names = _field_names(cls)
    chosen = draw(st.lists(st.sampled_from(names), max_size=min(4, len(names)), unique=True)) if names else []
    out = {}
    for name in chosen:
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and depth < 2 and draw(st.booleans()):
            out[name] = draw(config_data(tp, depth + 1))
        else:
            out[name] = draw(values)
    if draw(st.integers(0, 9)) == 0:
        out[draw(st.text(min_size=1, max_size=5))] = draw(scalars)
    return out


def _assert_clean(fn):
    """``fn()`` succeeds or raises UserInputError with a one-line message."""
    try:
        fn()
    except UserInputError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg.strip(), msg


@pytest.mark.parametrize("stage", sorted(CONFIGS))
def test_random_configs_load_or_fail_with_one_line(stage, tmp_path):
    cls = CONFIGS[stage]
    path = tmp_path / "config.yaml"

    @SETTINGS
    @given(data=config_data(cls))
    def check(data):
        try:
            text = yaml.safe_dump(data, allow_unicode=True)
        except (yaml.YAMLError, ValueError):  # pragma: no cover - safe_dump handles all of these
            return
        path.write_text(text)
        _assert_clean(lambda: load_config(cls, path))

    check()


@pytest.mark.parametrize("stage", sorted(CONFIGS))
def test_random_text_as_config_fails_cleanly(stage, tmp_path):
    cls = CONFIGS[stage]
    path = tmp_path / "config.yaml"

    @SETTINGS
    @given(
        text=st.text(max_size=60)
        | st.sampled_from(
            [
                "a: [1, 2\n",
                "- 1\n- 2\n",
                "a: 1\na: 2\n",
                "!!python/object:os.system x\n",
                "\x00",
                "a: &x [*x]\n",
                "? [1]\n: 2\n",
            ]
        )
    )
    def check(text):
        path.write_text(text)
        _assert_clean(lambda: load_config(cls, path))

    check()


# --- option values on the command line ----------------------------------------------------------

option_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "nan",
            "inf",
            "-inf",
            "1e309",
            "0",
            "-1",
            "0,0,0",
            "1,1,1",
            "nan,1,1",
            "1e9,1e9,1e9",
            "3,4",
            "4,4",
            "a,b,c",
            ",,",
            "1,2,3,4",
            "0.5",
            "99999999999999999999",
            "-0",
        ]
    ),
    st.lists(st.sampled_from(["1", "-2", "0", "nan", "1e400", "x", "8", "64"]), min_size=1, max_size=4).map(",".join),
)


def _run(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


COMMANDS = {name: s for name, s in STAGES.items() if name != "synth"}  # synth: random --shape would synthesise


@pytest.mark.parametrize("stage", sorted(COMMANDS))
def test_random_option_values_exit_0_or_2_never_1(stage, tmp_path):
    sdef = STAGES[stage]
    names = [n for n, o in sdef.options.items() if o.kind != "bool"]
    ws = tmp_path / "ws"  # does not exist: a valid-looking call ends in exit 2 at the workspace check

    @SETTINGS
    @given(
        picks=st.lists(st.tuples(st.sampled_from(names), option_text), min_size=1, max_size=3)
        if names
        else st.just([]),
        workers=st.one_of(st.none(), st.sampled_from(["0", "-3", "x", "99999", "1"])),
    )
    def check(picks, workers):
        argv = list(sdef.command)
        for name, value in picks:
            opt = sdef.options[name]
            argv += [value] if opt.positional else [f"--{name}={value}"]
        for name, opt in sdef.options.items():  # required ones get a plausible value if not drawn
            if opt.required and name not in {n for n, _ in picks}:
                argv += [str(tmp_path / "missing")] if opt.positional else [f"--{name}", str(tmp_path / "missing")]
        if sdef.workspace:
            argv += ["--workspace", str(ws)]
        if sdef.executor and workers is not None:
            argv += [f"--workers={workers}"]
        rc, err = _run(argv + ["-q"])
        assert rc in (0, 2), (argv, rc, err)
        if rc == 2:
            lines = [ln for ln in err.strip().splitlines() if ln]
            assert len(lines) == 1 and lines[0].startswith("connectome: error:"), (argv, err)

    check()


@st.composite
def pipeline_data(draw):
    stages = []
    for name in draw(st.lists(st.sampled_from(sorted(STAGES)), min_size=1, max_size=3)):
        sdef = STAGES[name]
        entry = {"stage": name}
        if sdef.options and draw(st.booleans()):
            keys = draw(st.lists(st.sampled_from(sorted(sdef.options)), max_size=3, unique=True))
            entry["options"] = {k: draw(values) for k in keys}
        if draw(st.integers(0, 3)) == 0:
            entry["config"] = draw(config_data(CONFIGS[name])) if name in CONFIGS else draw(values)
        for key in ("executor", "workers", "id"):
            if draw(st.integers(0, 5)) == 0:
                entry[key] = draw(scalars)
        stages.append(entry)
    data = {"stages": stages}
    if draw(st.integers(0, 4)) == 0:
        data["vars"] = draw(st.dictionaries(st.text(max_size=4), scalars, max_size=2))
    return data


def test_random_pipelines_load_or_fail_with_one_line(tmp_path):
    from connectome.pipeline import load_pipeline

    path = tmp_path / "pipe.yaml"

    @SETTINGS
    @given(data=pipeline_data())
    def check(data):
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        _assert_clean(lambda: load_pipeline(path, tmp_path / "ws"))

    check()
