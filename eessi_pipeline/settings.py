"""Settings shared by every command: command line > ``EESSI_PIPELINE_*`` environment > default."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import PipelineError

DEFAULT_REPOSITORY = "software.eessi.local"
REPOSITORY_ENV = "EESSI_PIPELINE_REPOSITORY"
VERSION_ENV = "EESSI_PIPELINE_VERSION"
STATE_DIR_ENV = "EESSI_PIPELINE_STATE_DIR"


@dataclass(frozen=True, slots=True)
class Settings:
    repository: str
    version: str | None  # None: the matrix's default_version
    state_dir: Path

    @property
    def staging_dir(self) -> Path:
        return self.state_dir / "staging"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"


def default_state_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "/root")) / ".local" / "state")
    return Path(base) / "eessi-pipeline"


def resolve_settings(
    *,
    repository: str | None = None,
    version: str | None = None,
    state_dir: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    env = os.environ if environ is None else environ
    return Settings(
        repository=repository or env.get(REPOSITORY_ENV) or DEFAULT_REPOSITORY,
        version=version or env.get(VERSION_ENV) or None,
        state_dir=Path(state_dir or env.get(STATE_DIR_ENV) or default_state_dir(env)),
    )


class StateDirError(PipelineError):
    """The state directory cannot be used: a file, read-only, someone else's, or writable by others."""


def check_state_dir(path: Path) -> None:
    """Refuse a state directory this process cannot safely use, before any command writes into it.

    It holds signing keys, staged tarballs and their records: it must be a directory (or creatable
    as one), writable by us, ours, and not writable by every user.
    """
    fix = f"pass --state-dir DIR (or set ${STATE_DIR_ENV}) to a directory of your own"
    if not path.exists() and not path.is_symlink():
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise StateDirError(f"state dir {path} cannot be created: {parent} is not a directory; {fix}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StateDirError(f"state dir {path} cannot be created: {parent} is read-only; {fix}")
        return
    try:
        st = path.stat()
    except OSError as e:
        raise StateDirError(f"state dir {path}: cannot be used ({e.strerror}); {fix}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state dir {path} is a file, not a directory; {fix}")
    if st.st_uid != os.geteuid():
        raise StateDirError(
            f"state dir {path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}): that user could "
            f"change its keys and staged records; {fix}"
        )
    if st.st_mode & stat.S_IWOTH:
        raise StateDirError(
            f"state dir {path} is writable by every user (mode {stat.S_IMODE(st.st_mode):04o}): anyone could "
            f"add keys or records; run `chmod o-w {path}`, or {fix}"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateDirError(f"state dir {path} is read-only; {fix}")


# -- the table of settings ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its command-line flag (if any), its environment variable, its default, what it does.

    Command line > environment > default.  ``cli/options.py`` makes the parsers' options from this
    table and ``python -m eessi_pipeline.settings`` prints it as the README's settings table.
    """

    name: str
    env: str
    default: str
    help: str
    flag: str = ""
    metavar: str = ""


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "state_dir",
        STATE_DIR_ENV,
        "~/.local/state/eessi-pipeline",
        "state directory: repository, keys, staging, builds, run reports",
        "--state-dir",
        "DIR",
    ),
    Setting("repository", REPOSITORY_ENV, DEFAULT_REPOSITORY, "CVMFS repository name", "--repo", "NAME"),
    Setting(
        "version",
        VERSION_ENV,
        "the matrix's default_version",
        "stack version, e.g. 2023.06",
        "--stack-version",
        "V",
    ),
    Setting(
        "matrix",
        "EESSI_PIPELINE_MATRIX",
        "matrices/targets.yaml",
        "architecture matrix file",
        "--matrix",
        "FILE",
    ),
    Setting(
        "cpuinfo",
        "EESSI_PROC_CPUINFO",
        "/proc/cpuinfo",
        "cpuinfo or lscpu text to detect from",
        "--cpuinfo",
        "FILE",
    ),
    Setting(
        "machine",
        "EESSI_MACHINE_TYPE",
        "from the text",
        "CPU family of that text (x86_64, aarch64, …)",
        "--machine",
        "FAMILY",
    ),
    Setting(
        "subdir_override",
        "EESSI_SOFTWARE_SUBDIR_OVERRIDE",
        "none",
        "force the software subdirectory (a target of the stack version)",
    ),
    Setting(
        "accel_override",
        "EESSI_ACCELERATOR_TARGET_OVERRIDE",
        "none",
        "force the accelerator subdirectory (accel/nvidia/ccXY)",
    ),
    Setting(
        "nvidia_smi",
        "EESSI_PIPELINE_NVIDIA_SMI",
        "nvidia-smi on PATH",
        "the nvidia-smi program to ask",
        "--nvidia-smi",
        "PROGRAM",
    ),
    Setting(
        "stratum0_port", "EESSI_PIPELINE_STRATUM0_PORT", "18080", "port of the embedded Stratum 0 (nginx)"
    ),
    Setting(
        "stratum1_port", "EESSI_PIPELINE_STRATUM1_PORT", "18081", "port of the embedded Stratum 1 (nginx)"
    ),
    Setting("proxy_port", "EESSI_PIPELINE_PROXY_PORT", "13128", "port of the embedded squid proxy"),
    Setting(
        "slurmctld_port",
        "EESSI_PIPELINE_SLURMCTLD_PORT",
        "16817",
        "port of the embedded slurmctld",
        "--slurmctld-port",
        "PORT",
    ),
    Setting(
        "slurmd_port",
        "EESSI_PIPELINE_SLURMD_PORT",
        "16818",
        "port of the embedded slurmd",
        "--slurmd-port",
        "PORT",
    ),
    Setting(
        "cluster_network",
        "EESSI_PIPELINE_CLUSTER_NETWORK",
        "10.213.7.0/24",
        "private network of a multi-node embedded cluster",
        "--network",
        "CIDR",
    ),
    Setting(
        "http_read_timeout",
        "EESSI_PIPELINE_HTTP_READ_TIMEOUT",
        "10 s",
        "HTTP: longest wait for any byte",
        "--http-read-timeout",
        "S",
    ),
    Setting(
        "http_deadline",
        "EESSI_PIPELINE_HTTP_DEADLINE",
        "120 s",
        "HTTP: deadline of one request",
        "--http-deadline",
        "S",
    ),
    Setting(
        "http_operation_deadline",
        "EESSI_PIPELINE_HTTP_OPERATION_DEADLINE",
        "300 s",
        "HTTP: deadline of one file over all servers",
        "--http-operation-deadline",
        "S",
    ),
    Setting(
        "http_max_bytes",
        "EESSI_PIPELINE_HTTP_MAX_BYTES",
        "1 GiB",
        "HTTP: largest object when the catalog gives no size",
        "--http-max-bytes",
        "BYTES",
    ),
    Setting(
        "snapshot_timeout",
        "EESSI_PIPELINE_SNAPSHOT_TIMEOUT",
        "1800 s",
        "Stratum 1: deadline of one whole snapshot (the replica keeps its revision when it passes)",
    ),
    Setting("cpuinfo_max_bytes", "EESSI_PIPELINE_CPUINFO_MAX_BYTES", "4 MiB", "largest cpuinfo/lscpu text"),
    Setting("yaml_max_bytes", "EESSI_PIPELINE_YAML_MAX_BYTES", "8 MiB", "largest YAML data file"),
    Setting(
        "yaml_max_nodes",
        "EESSI_PIPELINE_YAML_MAX_NODES",
        "1000000",
        "most YAML nodes once aliases are followed",
    ),
    Setting(
        "input_max_bytes", "EESSI_PIPELINE_INPUT_MAX_BYTES", "64 MiB", "largest report given to a command"
    ),
    Setting(
        "no_cache", "EESSI_PIPELINE_NO_CACHE", "unset", "1: check data files against their schema every time"
    ),
    Setting(
        "build_runtime",
        "EESSI_PIPELINE_BUILD_RUNTIME",
        "namespace",
        "where EasyBuild runs: namespace, apptainer, singularity",
        "--runtime",
        "NAME",
    ),
    Setting(
        "build_image",
        "EESSI_PIPELINE_BUILD_IMAGE",
        "EESSI's build node image",
        "build container image",
        "--image",
        "IMAGE",
    ),
    Setting(
        "emulation",
        "EESSI_PIPELINE_EMULATION",
        "auto",
        "auto: build generic targets of other CPU families under registered qemu-user; off: native only",
    ),
    Setting(
        "check_targets",
        "EESSI_PIPELINE_CHECK_TARGETS",
        "x86_64_generic,zen4",
        "targets whose software checks run without -m",
    ),
    Setting(
        "compat_test_state",
        "EESSI_PIPELINE_COMPAT_TEST_STATE",
        ".state/test",
        "where the tests keep the compatibility layer they build",
    ),
    Setting(
        "build_test_state",
        "EESSI_PIPELINE_BUILD_TEST_STATE",
        ".state/test",
        "where the tests keep the software they build",
    ),
    Setting(
        "gate_key", "EESSI_PIPELINE_GATE_KEY", "<state>/keys/build-node", "SSH key that signs gate records"
    ),
    Setting(
        "publish_backend",
        "EESSI_PIPELINE_PUBLISH_BACKEND",
        "embedded",
        "Stratum 0 to publish into: embedded or cvmfs_server",
        "--backend",
        "NAME",
    ),
    Setting(
        "stratum0_ssh",
        "EESSI_PIPELINE_STRATUM0_SSH",
        "local",
        "cvmfs_server backend: run it over SSH there",
        "--stratum0-ssh",
        "USER@HOST",
    ),
    Setting(
        "stratum0_url",
        "EESSI_PIPELINE_STRATUM0_URL",
        "/srv/cvmfs/<repo>",
        "cvmfs_server backend: where to read the revision",
        "--stratum0-url",
        "URL",
    ),
    Setting("run_url", "EESSI_PIPELINE_RUN_URL", "the GitHub Actions run", "link to the run in gate records"),
    Setting(
        "system_cflags",
        "EESSI_PIPELINE_SYSTEM_CFLAGS",
        "the target's flags",
        "compiler flags of SYSTEM-toolchain builds (set by the build)",
    ),
    Setting(
        "cuda_arch",
        "EESSI_PIPELINE_CUDA_ARCH",
        "from the accelerator target",
        "CUDA architecture of the GPU program build (set by the build)",
    ),
    Setting(
        "accel_cc",
        "EESSI_PIPELINE_ACCEL_CC",
        "from the accelerator target",
        "compute capability the GPU device check expects (set by the checks)",
    ),
)

# Variables the pipeline sets for its own child processes (ReFrame checks): not settings for users.
INTERNAL_ENV = frozenset({"EESSI_PIPELINE_MODULEPATH", "EESSI_PIPELINE_REFERENCES", "EESSI_PIPELINE_TARGET",
                          "EESSI_PIPELINE_SMOKE", "EESSI_PIPELINE_EMULATED"})  # fmt: skip


def setting(name: str) -> Setting:
    for s in SETTINGS:
        if s.name == name:
            return s
    raise KeyError(name)


def settings_markdown() -> str:
    """The README's settings table (pure)."""
    rows = ["| variable | option | default | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        flag = f"`{s.flag} {s.metavar}`" if s.flag else ""
        rows.append(f"| `{s.env}` | {flag} | {s.default} | {s.help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(settings_markdown(), end="")
