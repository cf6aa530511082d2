"""The user guide (docs/, mkdocs.yml) builds with ``mkdocs build --strict``, and its generated config
tables list every field of the configs they name, so they cannot silently go stale."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _hook():
    name = "connectome_docs_config_fields_hook"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DOCS / "hooks" / "config_fields.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses in the hook look their module up
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _field_names(cls: type, prefix: str = "") -> list[str]:
    """Every field of ``cls`` as a YAML config names it, nested config dataclasses as dotted names
    (computed here independently of the hook)."""
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        names.append(prefix + f.name)
        tp = hints[f.name]
        if typing.get_origin(tp) is typing.Union:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            names.extend(_field_names(tp, prefix + f.name + "."))
    return names


def _documented() -> dict[str, list[type]]:
    """Page (relative to docs/) -> the config classes its placeholders name."""
    hook = _hook()
    out: dict[str, list[type]] = {}
    for page in sorted(DOCS.rglob("*.md")):
        refs = hook.placeholders(page.read_text())
        if refs:
            out[page.relative_to(DOCS).as_posix()] = [hook.load_class(m, c) for m, c in refs]
    return out


def _html_of(page: str, site: Path) -> Path:
    stem = page[:-3]
    if stem == "index" or stem.endswith("/index"):
        return site / (stem + ".html")
    return site / stem / "index.html"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_mkdocs_build_strict_passes(site):
    assert (site / "index.html").is_file()
    assert (site / "stages" / "smooth" / "index.html").is_file()


def test_every_config_field_is_in_the_built_tables(site):
    documented = _documented()
    assert len(documented) >= 10, documented
    for page, classes in documented.items():
        html = _html_of(page, site).read_text()
        assert "config_fields(" not in html.replace("`config_fields(", ""), f"{page}: placeholder left unexpanded"
        for cls in classes:
            missing = [n for n in _field_names(cls) if f"<td><code>{n}</code></td>" not in html]
            assert not missing, f"{page}: {cls.__name__} fields missing from the built table: {missing}"


def test_each_generated_table_has_one_row_per_field_with_type_and_default():
    hook = _hook()
    from connectome.montage.align_stage import AlignConfig
    from connectome.stages.smooth import SmoothConfig

    for cls in {c for classes in _documented().values() for c in classes} | {SmoothConfig}:
        table = hook.render_table(cls)
        rows = [line for line in table.splitlines()[2:]]
        names = _field_names(cls)
        assert [r.split("`")[1] for r in rows] == names, cls.__name__
    smooth = hook.render_table(SmoothConfig)
    assert (
        "| `sigma_nm` | `tuple[float, float, float]` | `[40.0, 16.0, 16.0]` | Gaussian sigma in nm (z, y, x) |"
        in smooth
    )
    # a nested config shows the default its parent gives it, not the nested class's own
    assert "| `blockwise.block_shape_zyx` | `tuple[int, int, int]` | `[8, 256, 256]` |" in hook.render_table(
        AlignConfig
    )


def test_stage_configs_are_documented():
    """Every stage config of the lazy stage registry has a table somewhere in the guide."""
    stages = importlib.import_module("connectome.stages")
    registry = getattr(stages, "REGISTRY", {})
    documented = {c for classes in _documented().values() for c in classes}
    for name, module in registry.items():
        cfg = getattr(importlib.import_module(module), "Config", None)
        if cfg is not None:
            assert cfg in documented, f"stage {name}: {cfg.__name__} has no config_fields table in docs/"
