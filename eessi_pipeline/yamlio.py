"""YAML loading shared by every data file: safe, refuses duplicate keys, reports lines.

Bounded as well: a file larger than ``EESSI_PIPELINE_YAML_MAX_BYTES`` (default 8 MiB; at most that
many bytes plus one are read), a document that expands to more than ``EESSI_PIPELINE_YAML_MAX_NODES``
nodes once its aliases are followed (default 1,000,000: an alias bomb), a recursive alias, or one
nested too deeply is refused with one line naming the file and the limit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import PipelineError

MAX_BYTES_ENV = "EESSI_PIPELINE_YAML_MAX_BYTES"
MAX_NODES_ENV = "EESSI_PIPELINE_YAML_MAX_NODES"
DEFAULT_MAX_BYTES = 8 << 20
DEFAULT_MAX_NODES = 1_000_000


def _limit(var: str, default: int) -> int:
    value = os.environ.get(var, "")
    return int(value) if value.strip().isdigit() and int(value) > 0 else default


class _Limit(Exception):
    pass


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes in the document once every alias is replaced by what it names (shared nodes counted at each
    use); raises ``_Limit`` past ``limit`` or for an alias that contains itself. Iterative: no recursion."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            total = 1 + sum(sizes[id(c)] for c in _children(node))
            if total > limit:
                raise _Limit(f"expands to more than {limit} nodes through its aliases (an alias bomb?); "
                             f"raise ${MAX_NODES_ENV} if it is real")  # fmt: skip
            sizes[key] = total
            open_.discard(key)
            continue
        if key in sizes:
            continue
        if key in open_:
            raise _Limit("an alias refers to a node that contains it (a recursive document)")
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key]}); keep one of them",
                key_node.start_mark,
            )
        seen[key] = line
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=deep))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_bounded(text: str, max_nodes: int) -> Any:
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node, max_nodes)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(path: Path, error: type[PipelineError] = PipelineError) -> Any:
    """Parse one YAML file; any problem raises ``error`` naming the file and line."""
    max_bytes = _limit(MAX_BYTES_ENV, DEFAULT_MAX_BYTES)
    try:
        with Path(path).open("rb") as fh:
            raw = fh.read(max_bytes + 1)
        if len(raw) > max_bytes:
            raise error(f"{path}: larger than {max_bytes} bytes, the limit for a YAML data file; raise "
                        f"${MAX_BYTES_ENV} if it is real")  # fmt: skip
        text = raw.decode("utf-8")
    except FileNotFoundError as e:
        raise error(f"{path}: file not found; fix: pass the right path or restore the file from git") from e
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read ({e}); fix: check its permissions and encoding (UTF-8)") from e
    try:
        return _load_bounded(text, _limit(MAX_NODES_ENV, DEFAULT_MAX_NODES))  # _StrictLoader: a SafeLoader
    except _Limit as e:
        raise error(f"{path}: refused: {e}") from None
    except RecursionError:
        raise error(f"{path}: refused: nested too deeply to be a data file; flatten it") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise error(f"{path}{where}: invalid YAML: {problem}; fix the syntax there") from e
