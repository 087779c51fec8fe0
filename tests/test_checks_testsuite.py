"""Pure parts of the EESSI test-suite runs: the generated ReFrame configuration, argv, environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from eessi_pipeline.checks.references import ChecksError
from eessi_pipeline.checks.rfmconfig import TargetPrefix
from eessi_pipeline.checks.runner import HostRunner, RunPaths
from eessi_pipeline.checks.testsuite import (
    ENVIRON,
    SINGLE_NODE_SCALES,
    SUITE_TESTS,
    SYSTEM,
    TESTSUITE_PIN,
    mem_per_node_mib,
    run_testsuite,
    suite_argv,
    suite_config,
    suite_env,
    suite_test,
)
from eessi_pipeline.matrix import load_matrix

LOGDIR = Path("/w")


def _tp(name: str = "zen4") -> TargetPrefix:
    t = load_matrix().target(name)
    return TargetPrefix(t, f"/cvmfs/r/versions/2023.06/software/linux/{t.subdir}")


def _partition(cfg: dict) -> dict:
    (system,) = cfg["systems"]
    (partition,) = system["partitions"]
    return partition


def test_config_one_local_partition_with_lmod_and_the_target_modules() -> None:
    cfg = suite_config(_tp("zen4"), num_cpus=2, mem_per_node_mib=23000, logdir=LOGDIR)
    (system,) = cfg["systems"]
    assert (system["name"], system["modules_system"], system["hostnames"]) == (SYSTEM, "lmod", [".*"])
    part = _partition(cfg)
    assert (part["name"], part["scheduler"], part["launcher"]) == ("zen4", "local", "local")
    assert part["env_vars"] == [
        ["MODULEPATH", "/cvmfs/r/versions/2023.06/software/linux/x86_64/amd/zen4/modules/all"]
    ]
    assert part["environs"] == [ENVIRON] and cfg["environments"] == [{"name": ENVIRON}]


def test_config_gives_the_features_and_extras_the_suite_hooks_need() -> None:
    part = _partition(suite_config(_tp(), num_cpus=2, mem_per_node_mib=23000, logdir=LOGDIR))
    # hooks.filter_valid_systems_by_device_type asks for +cpu; filter_supported_scales for +<scale>
    assert part["features"][0] == "cpu" and tuple(part["features"][1:]) == SINGLE_NODE_SCALES
    # hooks.req_memory_per_node needs extras.mem_per_node (MiB); assign_tasks_* needs processor.num_cpus
    assert part["extras"] == {"mem_per_node": 23000}
    proc = part["processor"]
    assert (proc["arch"], proc["num_cpus"], proc["num_cpus_per_core"]) == ("zen4", 2, 1)
    assert proc["num_sockets"] * proc["num_cpus_per_socket"] == 2


def test_config_logs_into_the_run_directory() -> None:
    cfg = suite_config(_tp(), num_cpus=2, mem_per_node_mib=1000, logdir=Path("/runs/7"))
    (logging,) = cfg["logging"]
    files = [h["name"] for h in logging["handlers"] if h["type"] == "file"]
    assert files == ["/runs/7/reframe.log"]
    assert logging["handlers_perflog"][0]["basedir"] == "/runs/7/perflogs"


@pytest.mark.parametrize(("cpus", "mem"), [(0, 1000), (2, 0)], ids=["no-cpus", "no-memory"])
def test_config_without_cpus_or_memory_is_refused(cpus: int, mem: int) -> None:
    with pytest.raises(ChecksError, match="must be > 0"):
        suite_config(_tp(), num_cpus=cpus, mem_per_node_mib=mem, logdir=LOGDIR)


def test_config_is_valid_for_reframe(tmp_path) -> None:
    """ReFrame's own schema accepts the configuration (digit-led scale features need 4.10.0)."""
    config_mod = pytest.importorskip("reframe.core.config")
    import yaml

    path = tmp_path / "config.yaml"
    cfg = suite_config(_tp("x86_64_generic"), num_cpus=2, mem_per_node_mib=4096, logdir=tmp_path)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    loaded = config_mod.load_config(str(path))
    loaded.validate()


def test_scales_are_the_single_node_scales_of_the_installed_suite() -> None:
    constants = pytest.importorskip("eessi.testsuite.constants")
    single = {name for name, spec in constants.SCALES.items() if spec["num_nodes"] == 1}
    assert set(SINGLE_NODE_SCALES) == single


def test_numpy_test_is_the_suites_class_in_the_installed_package() -> None:
    pkg = pytest.importorskip("eessi.testsuite")
    test = suite_test("numpy")
    root = Path(pkg.__file__).parent
    source = (root / test.path / "numpy.py").read_text(encoding="utf-8")
    assert f"class {test.check}(" in source and f"find_modules('{test.module}')" in source
    mixin = (root / "eessi_mixin.py").read_text(encoding="utf-8")
    for key, _ in test.setvars:  # each is a variable of the test, of the suite's mixin, or ReFrame's
        assert f"{key} = variable(" in source + mixin or key == "executable", key


def test_argv_selects_one_class_at_one_scale_with_small_sizes() -> None:
    paths = RunPaths.under(Path("/w"))
    argv = suite_argv("rfm", paths, Path("/t/numpy"), f"{SYSTEM}:zen4", SUITE_TESTS["numpy"], "1_core")
    assert argv[0] == "rfm" and argv[-1] == "-r"
    pairs = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("-") and a != "-S"}
    assert pairs["-C"] == "/w/reframe-config.yaml" and pairs["-c"] == "/t/numpy"
    assert pairs["--system"] == "eessi_testsuite:zen4" and pairs["--report-file"] == "/w/report.json"
    assert pairs["-n"] == r"^EESSI_NumPy\b" and pairs["-t"] == "^1_core$"
    setvars = [argv[i + 1] for i, a in enumerate(argv) if a == "-S"]
    assert "EESSI_NumPy.matrix_size=512" in setvars
    # np_ops.py lacks its executable bit in the wheel: python3 runs it
    assert "EESSI_NumPy.executable=python3" in setvars
    assert any(s.startswith("EESSI_NumPy.user_executable_opts=np_ops.py --matrix-size 512") for s in setvars)


def test_argv_multi_node_scale_is_refused() -> None:
    with pytest.raises(ChecksError, match="does not fit the one-node local partition"):
        suite_argv("rfm", RunPaths.under(Path("/w")), Path("/t"), "s:p", SUITE_TESTS["numpy"], "2_nodes")


def test_unknown_test_names_the_choices() -> None:
    with pytest.raises(ChecksError, match="no EESSI test-suite test named 'gromacs'; use one of: numpy"):
        suite_test("gromacs")


def test_env_finds_lmod_and_the_target_modules_and_drops_stale_settings() -> None:
    base = {
        "PATH": "/bin",
        "RFM_CONFIG_FILES": "x",
        "LMOD_CMD": "/old/lmod",
        "LOADEDMODULES": "a/1",
        "EASYBUILD_PREFIX": "/eb",
    }
    env = suite_env(_tp(), base)
    assert env["PATH"] == "/bin" and env["RFM_COLORIZE"] == "n"
    assert env["MODULEPATH"].endswith("/x86_64/amd/zen4/modules/all")
    assert env["LMOD_CMD"] == "/usr/share/lmod/lmod/libexec/lmod" and env["BASH_ENV"].endswith("init/bash")
    assert not {"RFM_CONFIG_FILES", "LOADEDMODULES", "EASYBUILD_PREFIX"} & set(env)
    assert "EASYBUILD_ALLOW_USE_AS_ROOT_AND_ACCEPT_CONSEQUENCES" not in env


def test_env_as_root_lets_the_suite_configure_easybuild() -> None:
    env = suite_env(_tp(), {"PATH": "/bin"}, as_root=True)
    assert env["EASYBUILD_ALLOW_USE_AS_ROOT_AND_ACCEPT_CONSEQUENCES"] == "1"


def test_mem_per_node_from_meminfo() -> None:
    assert mem_per_node_mib("MemFree:   10 kB\nMemTotal:       24576000 kB\n") == 24000
    with pytest.raises(ChecksError, match="no MemTotal"):
        mem_per_node_mib("MemFree: 1 kB\n")


def test_pin_is_the_one_the_spec_names() -> None:
    assert TESTSUITE_PIN == "eessi-testsuite==1.1.0"


def test_env_keeps_easybuilds_scratch_in_the_run_directory() -> None:
    env = suite_env(_tp(), {"PATH": "/bin", "EASYBUILD_TMPDIR": "/elsewhere"}, tmpdir=Path("/runs/7/eb"))
    assert env["EASYBUILD_TMPDIR"] == "/runs/7/eb"


@pytest.mark.slow
def test_run_without_the_module_is_refused_naming_module_and_modulepath(tmp_path: Path) -> None:
    """Real ReFrame and test-suite, no build: no SciPy-bundle visible means no case, which is a failure."""
    pytest.importorskip("eessi.testsuite")
    if not Path("/usr/share/lmod/lmod/libexec/lmod").is_file():
        pytest.skip("Lmod is not installed")
    empty = tmp_path / "prefix"
    (empty / "modules" / "all").mkdir(parents=True)
    tp = TargetPrefix(load_matrix().target("x86_64_generic"), str(empty))
    with pytest.raises(
        ChecksError, match=rf"found no SciPy-bundle module in {empty}/modules/all.*ran no test case"
    ):
        run_testsuite(HostRunner(), tp, tmp_path / "run")
