"""JSON-schema validation of data files, with messages that name file, entry, key and fix.

Each schema lives in ``eessi_pipeline/schemas/<kind>.schema.json``.  Property
``description`` texts double as the fix hint printed with an error, and
``default`` values are filled in after validation, so defaults live in the schema.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PipelineError

if TYPE_CHECKING:
    import jsonschema


@cache
def load_schema(kind: str) -> dict[str, Any]:
    text = resources.files("eessi_pipeline").joinpath("schemas", f"{kind}.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    import jsonschema  # ~50 ms: only when something is validated (see datacache for the fast path)

    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _path_key(error: jsonschema.ValidationError) -> list[tuple[int, int, str]]:
    """Order errors by location, list indexes numerically (targets[2] before targets[10])."""
    return [(0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in error.absolute_path]


def _location(data: Any, path: list[str | int]) -> str:
    """Render a path like ``targets[3] (zen3).subdir``: entries are named when they have a name."""
    out = ""
    node = data
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            try:
                node = node[part]
            except (IndexError, KeyError, TypeError):
                node = None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f" ({node['name']})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def _fix_hint(error: jsonschema.ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    props = schema.get("properties", {})
    if error.validator == "required":
        missing = str(error.message).split("'")[1] if "'" in error.message else ""
        desc = props.get(missing, {}).get("description")
        return f"add `{missing}`: {desc}" if desc else f"add `{missing}`"
    if error.validator == "additionalProperties" and props:
        return "remove it, or use one of: " + ", ".join(sorted(props))
    desc = schema.get("description")
    return str(desc) if desc else "see the schema " + str(schema.get("$id", ""))


def validate(data: Any, kind: str, path: Path, error: type[PipelineError]) -> dict[str, Any]:
    """Validate ``data`` against schema ``kind``; return a copy with schema defaults filled in.

    All violations are reported together, one per line, each as
    ``FILE: LOCATION: PROBLEM; fix: HINT``.
    """
    schema = load_schema(kind)
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=_path_key)
    if errors:
        lines = []
        for e in errors:
            where = _location(data, list(e.absolute_path))
            lines.append(f"{path}: {where}: {e.message}; fix: {_fix_hint(e)}")
        raise error("\n".join(lines))
    filled = copy.deepcopy(data)
    _apply_defaults(filled, schema)
    if not isinstance(filled, dict):
        raise error(f"{path}: the top level must be a mapping; see the schema {schema.get('$id', kind)}")
    return filled


def _apply_defaults(node: Any, schema: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in node and "default" in sub:
                node[key] = copy.deepcopy(sub["default"])
            if key in node:
                _apply_defaults(node[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in node.items():
                if key not in schema.get("properties", {}):
                    _apply_defaults(value, extra)
    elif isinstance(node, list) and isinstance(schema.get("items"), dict):
        for item in node:
            _apply_defaults(item, schema["items"])
