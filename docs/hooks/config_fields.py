"""MkDocs hook: config field tables generated from the typed stage configs.

A page writes ``{{ config_fields("connectome.stages.smooth:SmoothConfig") }}`` and the hook
replaces it with a Markdown table of every field of that frozen dataclass, nested configs
flattened to dotted names exactly as a ``--config`` YAML (or an HPO space) names them::

    | field | type | default | meaning |
    | `sigma_nm` | `tuple[float, float, float]` | `[40.0, 16.0, 16.0]` | Gaussian sigma in nm (z, y, x) |
    | `blockwise.block_shape_zyx` | ... | ... | ... |

Type: the annotation as written in the source. Default: the value in a default-constructed
config (so a nested config shows the default its parent gives it, e.g. align's render blocks).
Meaning: the field's comment in the source -- the ``#:`` (or ``#``) comment lines right above
it, a trailing ``# ...`` on its line, or a string right below it. A field written directly
under a commented one without a comment of its own shares that comment ("see ``first``") when
the comment names it or the two names share a word.

Nothing is typed in by hand, so the tables cannot go stale; ``tests/test_docs.py`` checks that
every field of every referenced config appears in the built site. An unknown module or class
fails the build.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import json
import re
import sys
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any

# not right after a backtick: `{{ config_fields("...") }}` in a code span is shown, not expanded
PLACEHOLDER = re.compile(r"(?<!`)\{\{\s*config_fields\(\s*[\"']([\w.]+):([\w.]+)[\"']\s*\)\s*\}\}")

_DECORATION = re.compile(r"^[-=~*#\s]*$")


# ---------------------------------------------------------------------------------------------
# MkDocs events


def on_config(config, **kwargs):
    """Make the repository importable when mkdocs runs outside an installed environment."""
    root = str(Path(config["config_file_path"]).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def on_page_markdown(markdown: str, page=None, config=None, files=None, **kwargs) -> str:
    return expand(markdown, where=getattr(getattr(page, "file", None), "src_path", "page"))


# ---------------------------------------------------------------------------------------------
# the expansion (usable without MkDocs: tests call these)


def expand(markdown: str, where: str = "page") -> str:
    """``markdown`` with every ``{{ config_fields("module:Class") }}`` replaced by its table."""

    def one(m: re.Match) -> str:
        return render_table(load_class(m.group(1), m.group(2), where))

    return PLACEHOLDER.sub(one, markdown)


def placeholders(markdown: str) -> list[tuple[str, str]]:
    """The ``(module, class)`` pairs a page refers to."""
    return [(m.group(1), m.group(2)) for m in PLACEHOLDER.finditer(markdown)]


def load_class(module: str, name: str, where: str = "page") -> type:
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise _build_error(f"{where}: config_fields(\"{module}:{name}\"): {exc}") from None
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise _build_error(f"{where}: config_fields(\"{module}:{name}\"): not a dataclass")
    return obj


def _build_error(message: str) -> Exception:
    try:
        from mkdocs.exceptions import PluginError
    except ImportError:  # pragma: no cover - only without mkdocs
        return ValueError(message)
    return PluginError(message)


@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # dotted, as in the YAML config
    type: str
    default: str
    doc: str


def render_table(cls: type) -> str:
    rows = rows_for(cls)
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r.name}` | {_code(r.type)} | {_code(r.default)} | {_cell(r.doc)} |")
    return "\n".join(lines) + "\n"


def rows_for(cls: type, prefix: str = "", instance: Any = None, depth: int = 0) -> list[Row]:
    """One row per field of ``cls``, nested config dataclasses expanded after their own row."""
    if instance is None:
        instance = _default_instance(cls)
    docs = field_docs(cls)
    hints = _type_hints(cls)
    rows: list[Row] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        value = _default_of(f, instance)
        nested = _nested_dataclass(hints.get(f.name), value)
        type_text = f.type if isinstance(f.type, str) else _type_name(f.type)
        if nested is not None:
            default = "(below)" if value is not _REQUIRED and value is not None else _format(value)
        else:
            default = _format(value)
        doc = docs.get(f.name, "") or (_class_summary(nested) if nested is not None else "")
        rows.append(Row(prefix + f.name, type_text, default, doc))
        if nested is not None and depth < 4:
            sub = value if dataclasses.is_dataclass(value) else None
            rows.extend(rows_for(nested, prefix + f.name + ".", sub, depth + 1))
    return rows


_REQUIRED = object()


def _class_summary(cls: type) -> str:
    """The first paragraph of a nested config's own docstring (not dataclass's generated one)."""
    doc = inspect.getdoc(cls) or ""
    if not doc or doc.startswith(cls.__name__ + "("):
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def _default_instance(cls: type) -> Any:
    try:
        return cls()
    except TypeError:  # fields without defaults: read the defaults field by field
        return None


def _default_of(f: dataclasses.Field, instance: Any) -> Any:
    if instance is not None:
        return getattr(instance, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _REQUIRED


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError, AttributeError):  # an annotation that does not resolve: use the values
        return {}


def _nested_dataclass(tp: Any, value: Any) -> type | None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value)
    if tp is None:
        return None
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            tp = args[0]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    return None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _format(value: Any) -> str:
    if value is _REQUIRED:
        return "required"
    try:
        return json.dumps(value, default=_jsonable)
    except (TypeError, ValueError):
        return repr(value)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def _code(text: str) -> str:
    if text in ("required", "(below)"):
        return text
    # backticks inside a code span need a longer fence; pipes would split the table row
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}" if fence == "`" else f"{fence} {text} {fence}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# field comments from the source


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its comment, for ``cls`` and the dataclasses it inherits from."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        out.update(_own_field_docs(klass))
    return out


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source_file = inspect.getsourcefile(cls)
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    if source_file is None:
        return {}
    source = textwrap.dedent("".join(lines))
    tree = ast.parse(source)
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    if node is None:
        return {}
    comments = _comments(source)  # line -> (text, whole line?)
    docs: dict[str, str] = {}
    previous: tuple[str, int, str] | None = None  # (group head, end line, its doc)
    body = node.body
    for i, stmt in enumerate(body):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            previous = None
            continue
        name = stmt.target.id
        above = _comment_block_above(comments, stmt.lineno)
        trailing = [
            comments[ln][0]
            for ln in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
            if ln in comments and not comments[ln][1]
        ]
        below = ""
        if i + 1 < len(body):
            nxt = body[i + 1]
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                below = inspect.cleandoc(nxt.value.value)
        parts = [p for p in (" ".join(above), " ".join(trailing), below) if p]
        if parts:
            doc = " ".join(parts)
            docs[name] = doc
            previous = (name, stmt.end_lineno or stmt.lineno, doc)
        elif previous is not None and previous[1] == stmt.lineno - 1 and _same_group(previous[0], previous[2], name):
            docs[name] = f"See `{previous[0]}` above."
            previous = (previous[0], stmt.end_lineno or stmt.lineno, previous[2])
        else:
            previous = None
    return docs


def _same_group(head: str, head_doc: str, name: str) -> bool:
    """An uncommented field shares the comment of the commented field right above it when the
    comment names it or the two names share a word (``min_z`` / ``strong_z``, ``tile_px`` /
    ``margin_px``); otherwise it is left without one (``sigma_nm`` / ``truncate``)."""
    if re.search(rf"\b{re.escape(name)}\b", head_doc):
        return True
    return bool(set(head.split("_")) & set(name.split("_")))


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """Line number (1-based, within the class source) -> (comment text, comment-only line)."""
    out: dict[int, tuple[str, bool]] = {}
    lines = source.splitlines()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, IndentationError):
        return out
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        line_no = tok.start[0]
        whole = lines[line_no - 1][: tok.start[1]].strip() == ""
        out[line_no] = (tok.string, whole)
    return out


def _comment_block_above(comments: dict[int, tuple[str, bool]], lineno: int) -> list[str]:
    block: list[str] = []
    ln = lineno - 1
    while ln in comments and comments[ln][1]:
        block.insert(0, comments[ln][0])
        ln -= 1
    if any(c.startswith("#:") for c in block):
        block = [c for c in block if c.startswith("#:")]
    texts = [c.lstrip("#").lstrip(":").strip() for c in block]
    return [t for t in texts if t and not _DECORATION.match(t) and not _is_heading(t)]


def _is_heading(text: str) -> bool:
    """``---- neuropil (see neurites.py) ----``-style section headings are not field docs."""
    return text.startswith("--") and text.endswith("--")
