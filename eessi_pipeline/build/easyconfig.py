"""Read what the pipeline needs from an easyconfig file without running EasyBuild: name, version, sources.

Easyconfigs are Python syntax; only top-level assignments of literal values are read (``SYSTEM`` and
``SHLIB_EXT`` are names EasyBuild defines, so such assignments are skipped).  Templates
``%(name)s``, ``%(namelower)s``, ``%(version)s`` and ``%(versionsuffix)s`` in source names are resolved.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BuildError


@dataclass(frozen=True, slots=True)
class Source:
    """One source file of an easyconfig with the sha256 EasyBuild will verify."""

    filename: str
    sha256: str | None


@dataclass(frozen=True, slots=True)
class EasyConfig:
    path: Path
    name: str
    version: str
    versionsuffix: str
    sources: tuple[Source, ...]

    @property
    def module(self) -> str:
        """The module name under EasyBuild's default flat naming scheme, e.g. ``STREAM/5.10-hpcc-1.5.0``."""
        return f"{self.name}/{self.version}{self.versionsuffix}"

    @property
    def source_dir(self) -> str:
        """Where EasyBuild looks for the sources, relative to the sourcepath: ``<letter>/<Name>``."""
        return f"{self.name[0].lower()}/{self.name}"


def _literals(tree: ast.Module) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


def _template(text: str, fields: dict[str, str], path: Path) -> str:
    try:
        return text % fields
    except (KeyError, ValueError, TypeError) as e:
        raise BuildError(
            f"{path}: cannot resolve the template in source name {text!r} ({e}); use only %(name)s, "
            "%(namelower)s, %(version)s or %(versionsuffix)s in source names"
        ) from e


def parse_easyconfig(path: Path) -> EasyConfig:
    """Parse one easyconfig; a missing name/version or mismatched checksums raise :class:`BuildError`."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as e:
        raise BuildError(f"{path}: cannot read easyconfig ({e}); fix: correct the file") from e
    values = _literals(tree)
    name, version = values.get("name"), values.get("version")
    if not isinstance(name, str) or not isinstance(version, str):
        raise BuildError(f"{path}: `name` and `version` must be string literals; fix: set both")
    suffix = values.get("versionsuffix", "")
    if not isinstance(suffix, str):
        raise BuildError(f"{path}: `versionsuffix` must be a string literal")
    fields = {"name": name, "namelower": name.lower(), "version": version, "versionsuffix": suffix}
    raw_sources = values.get("sources", [])
    raw_sums = values.get("checksums", [])
    if not isinstance(raw_sources, list) or not isinstance(raw_sums, list):
        raise BuildError(f"{path}: `sources` and `checksums` must be list literals")
    if raw_sums and len(raw_sums) != len(raw_sources):
        raise BuildError(
            f"{path}: {len(raw_sources)} source(s) but {len(raw_sums)} checksum(s); "
            "fix: one sha256 per source"
        )
    sources: list[Source] = []
    for i, item in enumerate(raw_sources):
        filename = item.get("filename") if isinstance(item, dict) else item
        if not isinstance(filename, str):
            raise BuildError(f"{path}: sources[{i}] names no file; fix: a string or {{'filename': ...}}")
        sha = raw_sums[i] if i < len(raw_sums) else None
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
            raise BuildError(f"{path}: checksums[{i}] is not a sha256 hex digest; fix: `sha256sum` the file")
        sources.append(Source(_template(filename, fields, path), sha))
    return EasyConfig(path, name, version, suffix, tuple(sources))
