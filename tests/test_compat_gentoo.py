"""The gentoo-prefix backend: generated inventory and variables, the playbook's syntax, the clear refusal
where Gentoo's mirrors are out of reach (as on this machine)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from eessi_pipeline.compat import gentoo_prefix
from eessi_pipeline.compat.backend import BuildRequest, get_backend
from eessi_pipeline.compat.gentoo_prefix import (
    GentooPrefixBackend,
    find_tool,
    inventory_text,
    playbook_argv,
    playbook_path,
    playbook_vars,
    syntax_check,
    tcp_probe,
    write_inputs,
)
from eessi_pipeline.compat.layout import LayerSpec
from eessi_pipeline.compat.packageset import load_package_set
from eessi_pipeline.compat.state import ensure_layer
from eessi_pipeline.errors import CompatError
from eessi_pipeline.proc import CommandFailed, run


@pytest.fixture
def request_(tmp_path: Path) -> BuildRequest:
    spec = LayerSpec.create("2023.06", "x86_64", tmp_path / "state", repository="software.eessi.io")
    return BuildRequest(spec, load_package_set("x86_64"), jobs=4)


def test_gentoo_vars_and_inventory(request_: BuildRequest, tmp_path: Path) -> None:
    v = playbook_vars(request_)
    assert v["eprefix"] == "/cvmfs/software.eessi.io/versions/2023.06/compat/linux/x86_64"
    assert (
        v["package_set_name"] == "eessi-2023.06-linux-x86_64" and v["family"] == "x86_64" and v["jobs"] == 4
    )
    assert "sys-libs/glibc" in v["atoms"] and "dev-python/archspec" in v["atoms"]
    assert v["host_files"][0] == "/etc/passwd" and v["locales"] == ["en_US.UTF-8"]
    inventory, variables = write_inputs(request_, tmp_path / "in")
    assert json.loads(variables.read_text()) == v
    assert inventory.read_text() == inventory_text()
    assert "[build_host]" in inventory_text("/py") and "ansible_connection=local" in inventory_text("/py")
    argv = playbook_argv(inventory, variables, playbook_path(), program="ansible-playbook")
    assert argv == ["ansible-playbook", "-i", str(inventory), "-e", f"@{variables}", str(playbook_path())]


def test_gentoo_plan_says_where_it_runs(request_: BuildRequest) -> None:
    plan = GentooPrefixBackend().plan(request_)
    assert [s.name for s in plan.steps] == ["inputs", "bootstrap", "package set", "finish", "stage"]
    assert "needs Gentoo's mirrors" in plan.notes[0] and "--backend debian" in plan.notes[0]


@pytest.mark.skipif(find_tool("ansible-playbook") is None, reason="ansible-core is not installed")
def test_gentoo_playbook_passes_ansible_syntax_check(request_: BuildRequest, tmp_path: Path) -> None:
    out = syntax_check(request_, tmp_path / "in")
    assert "gentoo-prefix.yml" in out


@pytest.mark.skipif(find_tool("ansible-playbook") is None, reason="ansible-core is not installed")
def test_gentoo_syntax_check_catches_a_broken_playbook(request_: BuildRequest, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(playbook_path().read_text().replace("  tasks:", "  taskz:", 1))
    inventory, variables = write_inputs(request_, tmp_path / "in")
    with pytest.raises(CommandFailed):
        run(
            playbook_argv(inventory, variables, broken, syntax_check=True),
            timeout=120,
            env=gentoo_prefix.ansible_env(),
        )


def test_gentoo_build_here_fails_naming_mirrors_and_where_to_run(request_: BuildRequest) -> None:
    backend = GentooPrefixBackend(probe=lambda url: "cannot connect to distfiles.gentoo.org:443 (no route)")
    with pytest.raises(CompatError) as exc:
        ensure_layer(backend, request_)
    msg = str(exc.value)
    assert "needs Gentoo's mirrors" in msg and "https://distfiles.gentoo.org" in msg
    assert "run it on a build host" in msg and "--backend debian" in msg
    assert not request_.spec.staging.exists()


def test_gentoo_without_ansible_says_how_to_install(
    request_: BuildRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gentoo_prefix, "find_tool", lambda name: None)
    with pytest.raises(CompatError, match=r"ansible-playbook, which is not on PATH; install ansible-core"):
        GentooPrefixBackend(probe=lambda url: None).preflight(request_)


def test_gentoo_tcp_probe_reports_a_closed_port() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert "cannot connect to 127.0.0.1" in (tcp_probe(f"http://127.0.0.1:{port}/", timeout=2) or "")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        assert tcp_probe(f"http://127.0.0.1:{srv.getsockname()[1]}/", timeout=2) is None
    assert tcp_probe("not a url") == "'not a url' names no host"


def test_gentoo_backend_is_in_the_table() -> None:
    assert get_backend("gentoo-prefix").name == "gentoo-prefix" and get_backend("debian").name == "debian"
    with pytest.raises(CompatError, match="unknown compat backend 'nix'"):
        get_backend("nix")
