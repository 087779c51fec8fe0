"""Read what the pipeline needs from an easyconfig file without running EasyBuild: name, version, sources.

Easyconfigs are Python syntax; only top-level assignments of literal values are read (``SYSTEM`` and
``SHLIB_EXT`` are names EasyBuild defines, so such assignments are skipped).  Templates
``%(name)s``, ``%(namelower)s``, ``%(version)s`` and ``%(versionsuffix)s`` in source names are resolved.
``toolchain`` is read when it is a literal mapping; the name ``SYSTEM`` (or none) reads as ``SYSTEM``.

Easyconfigs shipped with EasyBuild (production stacks) are read for their identity only
(``with_sources=False``): EasyBuild fetches their sources from their ``source_urls`` itself, and their
``sources``/``checksums`` use EasyBuild's constants and per-file mappings that this reader does not model.

Bundles (``Bundle``, ``PythonBundle``) carry their sources in ``exts_list`` entries
``(name, version, {'sources' or 'source_tmpl', 'checksums'})``; those count as sources of the easyconfig
too (EasyBuild looks for extension sources in the bundle's own ``<letter>/<Name>/`` directory), with the
templates resolved against the extension's name and version.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BuildError

SYSTEM = "SYSTEM"


@dataclass(frozen=True, slots=True)
class Source:
    """One source file of an easyconfig with the sha256 EasyBuild will verify."""

    filename: str
    sha256: str | None


@dataclass(frozen=True, slots=True)
class Extension:
    """One ``exts_list`` entry of a bundle: a package installed into the bundle's prefix."""

    name: str
    version: str


@dataclass(frozen=True, slots=True)
class EasyConfig:
    path: Path
    name: str
    version: str
    versionsuffix: str
    sources: tuple[Source, ...]  # the easyconfig's own sources, then those of its extensions
    extensions: tuple[Extension, ...] = ()
    toolchain: str = SYSTEM  # "SYSTEM" or "<name>-<version>", e.g. "GCCcore-12.3.0"

    @property
    def module(self) -> str:
        """The module name under EasyBuild's default flat naming scheme, e.g. ``STREAM/5.10-hpcc-1.5.0``
        or, with a toolchain, ``zlib/1.2.13-GCCcore-12.3.0``."""
        tc = "" if self.toolchain == SYSTEM else f"-{self.toolchain}"
        return f"{self.name}/{self.version}{tc}{self.versionsuffix}"

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


def _toolchain(value: Any, path: Path) -> str:
    if value is None:
        return SYSTEM
    if (
        isinstance(value, dict)
        and isinstance(value.get("name"), str)
        and isinstance(value.get("version"), str)
    ):
        return SYSTEM if value["name"].lower() == "system" else f"{value['name']}-{value['version']}"
    raise BuildError(
        f"{path}: `toolchain` must be SYSTEM or {{'name': ..., 'version': ...}}; fix: correct the file"
    )


def parse_easyconfig(path: Path, *, with_sources: bool = True) -> EasyConfig:
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
    toolchain = _toolchain(values.get("toolchain"), path)
    if not with_sources:
        return EasyConfig(path, name, version, suffix, (), toolchain=toolchain)
    fields = {"name": name, "namelower": name.lower(), "version": version, "versionsuffix": suffix}
    sources = _sources(values.get("sources", []), values.get("checksums", []), fields, path, "")
    extensions: list[Extension] = []
    for ext_name, ext_version, opts in _extensions(values, path):
        extensions.append(Extension(ext_name, ext_version))
        ext_fields = {
            "name": ext_name, "namelower": ext_name.lower(), "version": ext_version, "versionsuffix": "",
        }  # fmt: skip
        raw = opts.get("sources", [opts.get("source_tmpl", "%(name)s-%(version)s.tar.gz")])
        sources += _sources(raw, opts.get("checksums", []), ext_fields, path, f"exts_list ({ext_name}): ")
    return EasyConfig(path, name, version, suffix, tuple(sources), tuple(extensions), toolchain)


def _sources(raw_sources: Any, raw_sums: Any, fields: dict[str, str], path: Path, where: str) -> list[Source]:
    """Source names with their checksums, templates resolved; ``where`` prefixes messages (pure)."""
    if isinstance(raw_sources, str):
        raw_sources = [raw_sources]
    if not isinstance(raw_sources, list) or not isinstance(raw_sums, list):
        raise BuildError(f"{path}: {where}`sources` and `checksums` must be list literals")
    if raw_sums and len(raw_sums) != len(raw_sources):
        raise BuildError(
            f"{path}: {where}{len(raw_sources)} source(s) but {len(raw_sums)} checksum(s); "
            "fix: one sha256 per source"
        )
    sources: list[Source] = []
    for i, item in enumerate(raw_sources):
        filename = item.get("filename") if isinstance(item, dict) else item
        if not isinstance(filename, str):
            raise BuildError(
                f"{path}: {where}sources[{i}] names no file; fix: a string or {{'filename': ...}}"
            )
        sha = raw_sums[i] if i < len(raw_sums) else None
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
            raise BuildError(
                f"{path}: {where}checksums[{i}] is not a sha256 hex digest; fix: `sha256sum` the file"
            )
        sources.append(Source(_template(filename, fields, path), sha))
    return sources


def _extensions(values: dict[str, Any], path: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, version, options)`` of each ``exts_list`` entry; options default to
    ``exts_default_options`` (pure)."""
    raw = values.get("exts_list", [])
    defaults = values.get("exts_default_options", {})
    if not isinstance(raw, list) or not isinstance(defaults, dict):
        raise BuildError(
            f"{path}: `exts_list` must be a list literal and `exts_default_options` a dict literal"
        )
    out: list[tuple[str, str, dict[str, Any]]] = []
    for i, ext in enumerate(raw):
        if isinstance(ext, str):
            raise BuildError(
                f"{path}: exts_list[{i}] ({ext}) has no version and no source; fix: give it as "
                f"('{ext}', '<version>', {{'sources': [...], 'checksums': [...]}})"
            )
        ok = isinstance(ext, tuple) and len(ext) in (2, 3) and all(isinstance(x, str) for x in ext[:2])
        opts = ext[2] if ok and len(ext) == 3 else {}
        if not ok or not isinstance(opts, dict):
            raise BuildError(
                f"{path}: exts_list[{i}] is not (name, version[, {{options}}]); fix: write it as "
                "('numpy', '1.25.1', {'sources': [...], 'checksums': [...]})"
            )
        out.append((ext[0], ext[1], {**defaults, **opts}))
    return out
