"""The site file (a Slurm cluster for the ReFrame checks): schema, matrix targets, generated partitions."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from eessi_pipeline.checks.references import ChecksError
from eessi_pipeline.checks.rfmconfig import SITE_EXAMPLE, TargetPrefix, config, load_site, parse_site
from eessi_pipeline.matrix import load_matrix

MATRIX = load_matrix()
TARGETS = [t.name for t in MATRIX.targets]
SITE = Path("site.yaml")


def _tp(name: str) -> TargetPrefix:
    t = MATRIX.target(name)
    return TargetPrefix(t, f"/cvmfs/r/versions/2023.06/software/linux/{t.subdir}")


def _example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SITE_EXAMPLE.read_text(encoding="utf-8"))
    return data


def _reframe_errors(cfg: dict[str, Any]) -> list[str]:
    """Violations of ReFrame's own configuration schema (its builtin config adds `logging`)."""
    rfm = pytest.importorskip("reframe")
    schema = json.loads((Path(rfm.__file__).parent / "schemas" / "config.json").read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{list(e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(cfg)
        if not (e.validator == "required" and not e.absolute_path and "'logging'" in e.message)
    ]


def test_site_example_loads_against_the_matrix() -> None:
    site = load_site(SITE_EXAMPLE, TARGETS)
    assert site.system == "example_cluster" and site.modules_system == "lmod"
    assert [(p.name, p.target) for p in site.partitions] == [
        ("rome", "zen2"),
        ("genoa", "zen4"),
        ("shared", "x86_64_generic"),
    ]
    genoa = site.partitions[1]
    # left out in the file, filled from the schema's defaults
    assert (genoa.max_jobs, genoa.launcher, genoa.scheduler) == (8, "srun", "slurm")
    assert genoa.access == ("--partition=genoa", "--account=proj0001", "--constraint=genoa")


def test_site_example_gives_slurm_partitions_with_target_features() -> None:
    site = load_site(SITE_EXAMPLE, TARGETS)
    cfg = config([_tp("zen2"), _tp("zen4"), _tp("x86_64_generic")], num_cpus=2, site=site)
    cluster, local = cfg["systems"]
    assert (cluster["name"], local["name"]) == ("example_cluster", "eessi_local")
    assert cluster["hostnames"] == ["login[0-9]+", r"login[0-9]+\.cluster\.example"]
    assert cluster["modules_system"] == "lmod"
    rome = cluster["partitions"][0]
    assert (rome["name"], rome["scheduler"], rome["launcher"]) == ("rome", "slurm", "srun")
    assert rome["access"] == ["--partition=rome", "--account=proj0001"]
    assert rome["features"] == ["cpu", "arch_zen2", "slurm"]
    assert rome["processor"]["arch"] == "zen2" and rome["processor"]["num_cpus"] == 128
    assert rome["env_vars"] == [
        ["MODULEPATH", "/cvmfs/r/versions/2023.06/software/linux/x86_64/amd/zen2/modules/all"]
    ]
    assert [p["features"][1] for p in cluster["partitions"]] == [
        "arch_zen2",
        "arch_zen4",
        "arch_x86_64_generic",
    ]
    assert all(p["scheduler"] == "slurm" and "slurm" in p["features"] for p in cluster["partitions"])
    assert [p["max_jobs"] for p in cluster["partitions"]] == [8, 8, 2]


def test_site_config_of_one_target_keeps_only_its_partition() -> None:
    # the checks runner configures one target at a time; the site file lists the whole cluster
    cfg = config([_tp("zen4")], num_cpus=2, site=load_site(SITE_EXAMPLE, TARGETS))
    assert [p["name"] for p in cfg["systems"][0]["partitions"]] == ["genoa"]


def test_site_example_config_is_valid_for_reframe() -> None:
    cfg = config([_tp("zen2"), _tp("zen4"), _tp("x86_64_generic")], num_cpus=2, site=load_site(SITE_EXAMPLE))
    assert _reframe_errors(cfg) == []
    broken = copy.deepcopy(cfg)
    broken["systems"][0]["partitions"][0]["max_jobs"] = "many"
    assert _reframe_errors(broken)  # the check above can fail


def test_site_squeue_scheduler_and_mpirun_launcher_reach_the_config() -> None:
    data = _example()
    data["partitions"][1].update(scheduler="squeue", launcher="mpirun")
    cfg = config([_tp("zen4")], num_cpus=2, site=parse_site(data, SITE, TARGETS))
    (genoa,) = cfg["systems"][0]["partitions"]
    assert (genoa["scheduler"], genoa["launcher"]) == ("squeue", "mpirun")


def _edit(path: list[str | int], value: Any = None, delete: bool = False) -> dict[str, Any]:
    data = _example()
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "where", "fix"),
    [
        (_edit(["cluster"], "x"), "(top level): Additional properties", "remove it, or use one of: descr,"),
        (
            _edit(["partitions", 0, "acces"], ["--partition=rome"]),
            "partitions[0] (rome): Additional properties are not allowed ('acces' was unexpected)",
            "use one of: access, descr,",
        ),
        (
            _edit(["partitions", 1, "target"], "zen9"),
            "partitions[1] (genoa).target: unknown target 'zen9'",
            "use one of a64fx,",
        ),
        (
            _edit(["partitions", 2, "launcher"], "ssh"),
            "partitions[2] (shared).launcher: 'ssh'",
            "srun on Slurm",
        ),
        (_edit(["partitions", 0, "num_cpus"], delete=True), "partitions[0] (rome): 'num_cpus'", "CPUs"),
        (
            _edit(["partitions", 0, "access"], ["partition=rome"]),
            "partitions[0] (rome).access[0]: 'partition=rome' does not match",
            "one sbatch option",
        ),
        (_edit(["modules_system"], "tmod4"), "modules_system: 'tmod4'", "Lua modules"),
        (_edit(["partitions"], []), "partitions: [] should be non-empty", "at least one Slurm partition"),
        (_edit(["system"], "my cluster"), "system: 'my cluster' does not match", "letters, digits"),
        (
            _edit(["partitions", 1, "name"], "rome"),
            "partitions[1] (rome).name: partition name 'rome' is used twice",
            "its own name",
        ),
    ],
    ids=[
        "unknown-top-key",
        "misspelt-partition-key",
        "unknown-target",
        "bad-launcher",
        "no-num-cpus",
        "access-not-an-option",
        "not-lmod",
        "no-partitions",
        "bad-system-name",
        "duplicate-partition",
    ],
)
def test_site_bad_file_raises_naming_file_key_and_fix(data: dict[str, Any], where: str, fix: str) -> None:
    with pytest.raises(ChecksError) as e:
        parse_site(data, SITE, TARGETS)
    message = str(e.value)
    assert message.startswith(f"site.yaml: {where}"), message
    assert "; fix: " in message and fix in message.split("; fix: ", 1)[1], message


def test_site_file_on_disk_error_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    text = SITE_EXAMPLE.read_text(encoding="utf-8").replace("target: zen4", "target: zen44")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(
        ChecksError, match=rf"^{path}: partitions\[1\] \(genoa\)\.target: unknown target 'zen44'"
    ):
        load_site(path, TARGETS)


def test_site_without_partition_for_the_run_target_raises() -> None:
    site = load_site(SITE_EXAMPLE, TARGETS)
    with pytest.raises(
        ChecksError, match=r"tests a configured target \(zen3\): 'rome' tests 'zen2', 'genoa'"
    ):
        config([_tp("zen3")], num_cpus=2, site=site)
