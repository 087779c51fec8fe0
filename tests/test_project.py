"""Project files agree with each other: README quick start, .ci/run, tox.ini, pyproject."""

from __future__ import annotations

import configparser
import re
import tomllib

from helpers import PROJECT_ROOT


def _quick_start_commands() -> list[str]:
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's Quick start has no ```bash block"
    return [ln.strip() for ln in block.group(1).splitlines() if ln.strip()]


def test_readme_quick_start_has_exactly_two_commands() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    assert commands[0].startswith("bash setup.sh")


def test_ci_run_ends_with_readme_test_command() -> None:
    lines = [ln.strip() for ln in (PROJECT_ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [ln for ln in lines if ln and not ln.startswith("#")]
    assert commands[-1] == _quick_start_commands()[1]
    assert "bash setup.sh" in commands  # installs the same way the README does


def test_tox_has_py_lint_and_publish_envs() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(PROJECT_ROOT / "tox.ini")
    assert "pytest -n auto" in cfg["testenv"]["commands"]
    assert "mypy --strict" in cfg["testenv:lint"]["commands"]  # files: pyproject's [tool.mypy]
    assert "ruff check" in cfg["testenv:lint"]["commands"]
    assert "eessi-pipeline publish" in cfg["testenv:publish"]["commands"]


def test_pyproject_declares_console_script_and_python() -> None:
    data = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert data["project"]["scripts"]["eessi-pipeline"] == "eessi_pipeline.cli:main"
    assert data["project"]["requires-python"] == ">=3.11"
    assert any(dep.startswith("archspec==") for dep in data["project"]["dependencies"])


def test_top_level_layout_is_complete() -> None:
    for name in (
        "pyproject.toml",
        "conftest.py",
        "eessi_pipeline",
        "tests",
        "checks",
        "matrices",
        "tox.ini",
        "README.md",
        ".ci/run",
        "setup.sh",
        ".github/workflows/pipeline.yml",
    ):
        assert (PROJECT_ROOT / name).exists(), name


def test_nothing_reads_outside_the_checkout() -> None:
    """No tracked file names a folder beside the checkout (the reference material of the team's
    workplace) or the variable that used to point at it: a clone alone is complete."""
    import subprocess

    listed = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    offenders = []
    pattern = re.compile(r"\.\./shared\b|EESSI_PIPELINE_SHARED|parent\.parent\s*/\s*\"shared\"")
    for rel in listed.stdout.splitlines():
        path = PROJECT_ROOT / rel
        if rel.startswith("tests/data/") or rel == "tests/test_project.py" or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [f"{rel}: {m.group(0)}" for m in pattern.finditer(text)]
    assert offenders == []


def test_ci_run_works_in_a_bare_clone() -> None:
    text = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "git clone" in text and "mktemp -d" in text  # nothing beside the clone it tests


def test_pre_commit_runs_what_tox_lint_runs() -> None:
    import yaml

    config = yaml.safe_load((PROJECT_ROOT / ".pre-commit-config.yaml").read_text())
    entries = [hook["entry"] for repo in config["repos"] for hook in repo["hooks"]]
    assert any(e.startswith("ruff check") for e in entries)
    assert any(e.startswith("ruff format --check") for e in entries)
    assert any(e.startswith("mypy --strict") for e in entries)
    data = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert {"C901", "TID251"} <= set(data["tool"]["ruff"]["lint"]["select"])
    assert set(data["tool"]["mypy"]["files"]) == {"eessi_pipeline", "checks", "benchmarks"}


def test_architecture_doc_names_only_paths_that_exist() -> None:
    text = (PROJECT_ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"(?:eessi_pipeline|checks|tests)/[\w/]*[\w.]*", text))
    named |= set(re.findall(r"`((?:[a-z_]+/)?[a-z_]+\.py)", text))  # module paths inside eessi_pipeline/
    missing = []
    for rel in sorted(named):
        path = rel.split(":")[0].rstrip("/.")
        if not (PROJECT_ROOT / path).exists() and not (PROJECT_ROOT / "eessi_pipeline" / path).exists():
            missing.append(rel)
    assert missing == []
