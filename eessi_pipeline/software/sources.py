"""Sources without internet: every easyconfig source into ``<sourcepath>/<letter>/<Name>/``, verified.

Providers, tried in order: ``repo`` (files kept in git under ``matrices/sources/<letter>/<Name>/``),
then the one ``matrices/stacks.yaml`` names for the file: ``debian`` (``apt-get source
--download-only`` with a private apt configuration whose sources list has ``deb-src`` entries, in the
state dir: the host's apt state is never touched) or ``pypi`` (``pip download`` of exactly that file:
wheel tags and python version are taken from the file name).  A file already in the sourcepath with the
right checksum is kept.  Deciding what to fetch (:func:`plan_sources`, the argv builders) is pure; the
:class:`Provisioner` runs it.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError
from ..fileio import file_sha256
from ..proc import CommandFailed, run
from .easyconfig import EasyConfig
from .stacks import DebianArchive, ProviderSpec, StackConfig

log = logging.getLogger(__name__)

APT_TIMEOUT = 600.0
PIP_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Wanted:
    """One source to place at ``<sourcepath>/<subdir>/<filename>``, and who may provide it."""

    easyconfig: Path
    subdir: str
    filename: str
    sha256: str | None
    providers: tuple[ProviderSpec, ...]


def plan_sources(easyconfigs: tuple[EasyConfig, ...], stacks: StackConfig) -> tuple[Wanted, ...]:
    """Every source of the easyconfigs with its providers, repo first (pure apart from a stat)."""
    out: list[Wanted] = []
    for ec in easyconfigs:
        for src in ec.sources:
            providers: list[ProviderSpec] = []
            if (stacks.repo_sources / ec.source_dir / src.filename).is_file():
                providers.append(ProviderSpec("repo", str(stacks.repo_sources / ec.source_dir)))
            named = stacks.provider(src.filename)
            if named is not None:
                providers.append(named)
            out.append(Wanted(ec.path, ec.source_dir, src.filename, src.sha256, tuple(providers)))
    return tuple(out)


def apt_sources_list(archive: DebianArchive) -> str:
    """The private sources list: ``deb-src`` entries only (pure)."""
    return f"deb-src {archive.mirror} {archive.suite} {' '.join(archive.components)}\n"


def apt_options(state: Path) -> list[str]:
    """apt options that keep lists, caches and the sources list inside ``state`` (pure)."""
    return [
        "-o", f"Dir::Etc::SourceList={state / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={state / 'lists'}",
        "-o", f"Dir::Cache={state / 'cache'}",
        "-o", "APT::Sandbox::User=root",
    ]  # fmt: skip


def apt_update_argv(state: Path) -> list[str]:
    return ["apt-get", "-q", *apt_options(state), "update"]


def apt_source_argv(state: Path, package: str) -> list[str]:
    return ["apt-get", "-q", *apt_options(state), "source", "--download-only", package]


def pip_download_argv(requirement: str, filename: str, dest: Path, python: str = sys.executable) -> list[str]:
    """``pip download`` of exactly ``filename``: a wheel's tags pin python, abi and platforms (pure)."""
    argv = [python, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest)]
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
        if len(parts) < 5:
            raise BuildError(f"{filename}: not a wheel file name (name-version-python-abi-platform.whl)")
        pytag, abi, plat = parts[-3], parts[-2], parts[-1]
        argv += ["--only-binary=:all:", "--abi", abi]
        if pytag.startswith("cp") and pytag[2:].isdigit():
            argv += ["--implementation", "cp", "--python-version", f"{pytag[2]}.{pytag[3:]}"]
        for p in plat.split("."):
            argv += ["--platform", p]
    else:
        argv.append("--no-binary=:all:")
    return [*argv, requirement]


@dataclass(frozen=True, slots=True)
class Provisioner:
    """Runs the providers; ``state`` holds the private apt state and download scratch space."""

    sourcepath: Path
    state: Path
    archive: DebianArchive

    def provision(self, wanted: tuple[Wanted, ...]) -> dict[str, str]:
        """Place every wanted source; return ``{subdir/filename: sha256}``. Raise naming what failed."""
        done: dict[str, str] = {}
        for w in wanted:
            dest = self.sourcepath / w.subdir / w.filename
            if dest.is_file() and self._ok(dest, w):
                done[f"{w.subdir}/{w.filename}"] = file_sha256(dest)
                continue
            tried: list[str] = []
            for provider in w.providers:
                tried.append(f"{provider.kind} ({provider.what})")
                try:
                    got = self._fetch(provider, w)
                except CommandFailed as e:
                    log.warning("%s: provider %s failed: %s", w.filename, provider.kind, e)
                    continue
                if got is None:
                    continue
                if not self._ok(got, w):
                    log.warning(
                        "%s from %s has sha256 %s, not %s", w.filename, provider.kind, file_sha256(got),
                                w.sha256)  # fmt: skip
                    tried[-1] += f": checksum {file_sha256(got)} differs"
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(got, dest)
                log.info("provisioned %s from %s", dest, provider.kind)
                break
            else:
                raise BuildError(
                    f"{w.easyconfig}: cannot provision source {w.filename} (sha256 {w.sha256}); "
                    "providers tried: "
                    f"{', '.join(tried) or 'none'}; fix: put the file in the repo under "
                    f"matrices/sources/{w.subdir}/, or name a provider for it under `sources:` in "
                    "matrices/stacks.yaml"
                )
            done[f"{w.subdir}/{w.filename}"] = file_sha256(dest)
        return done

    @staticmethod
    def _ok(path: Path, w: Wanted) -> bool:
        return w.sha256 is None or file_sha256(path) == w.sha256

    def _fetch(self, provider: ProviderSpec, w: Wanted) -> Path | None:
        if provider.kind == "repo":
            path = Path(provider.what) / w.filename
            return path if path.is_file() else None
        scratch = self.state / "downloads"
        scratch.mkdir(parents=True, exist_ok=True)
        if provider.kind == "pypi":
            work = Path(tempfile.mkdtemp(dir=scratch))
            run(pip_download_argv(provider.what, w.filename, work), timeout=PIP_TIMEOUT)
            return self._keep(work, w.filename)
        if provider.kind == "debian":
            self._apt_ready()
            work = Path(tempfile.mkdtemp(dir=scratch))
            # Only the orig tarball matters: a missing debian.tar (old revision gone) makes apt exit 100.
            res = run(
                apt_source_argv(self.state / "apt", provider.what), timeout=APT_TIMEOUT, cwd=work, check=False
            )
            if not (work / w.filename).is_file():
                log.warning("apt-get source %s did not give %s: %s", provider.what, w.filename, res.tail(5))
            return self._keep(work, w.filename)
        raise BuildError(f"unknown source provider {provider.kind!r}; use repo, debian or pypi")

    def _keep(self, work: Path, filename: str) -> Path | None:
        """Move the wanted file out of a download directory, drop the rest."""
        found = work / filename
        kept: Path | None = None
        if found.is_file():
            kept = work.parent / filename
            found.replace(kept)
        shutil.rmtree(work, ignore_errors=True)
        return kept

    def _apt_ready(self) -> None:
        apt = self.state / "apt"
        marker = apt / "updated"
        listing = apt_sources_list(self.archive)
        if marker.is_file() and marker.read_text() == listing:
            return
        for sub in ("lists/partial", "cache/archives/partial"):
            (apt / sub).mkdir(parents=True, exist_ok=True)
        (apt / "sources.list").write_text(listing)
        run(apt_update_argv(apt), timeout=APT_TIMEOUT)
        marker.write_text(listing)
