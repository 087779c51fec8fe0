"""startprefix, host links, package-set links and wheels written into a layer."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from eessi_pipeline.compat.packageset import Link
from eessi_pipeline.compat.prefixfiles import (
    LEAVING_RE,
    cached_wheel,
    console_script,
    console_scripts,
    install_wheel,
    link_host_files,
    locale_dirname,
    make_links,
    startprefix_script,
    write_startprefix,
)
from eessi_pipeline.errors import CompatError

P = "/cvmfs/r/versions/2023.06/compat/linux/x86_64"


def test_startprefix_script_is_posix_sh_with_clean_environment() -> None:
    text = startprefix_script(P, "x86_64-linux-gnu", "en_US.UTF-8", "debian")
    assert text.startswith(f"#!{P}/bin/sh\n")
    subprocess.run(["sh", "-n"], input=text.encode(), check=True)  # dash parses it: no bashisms
    for needle in [
        '"$EPREFIX/usr/bin/env" -i',
        'LOCPATH="$EPREFIX/usr/lib/locale"',
        "PYTHONNOUSERSITE=1",
        'SASL_PATH="$EPREFIX/usr/lib/x86_64-linux-gnu/sasl2"',
        'OPENSSL_CONF="$EPREFIX/usr/lib/ssl/openssl.cnf"',
        'PATH="$EPREFIX/usr/local/bin:$EPREFIX/usr/bin:$EPREFIX/bin:$EPREFIX/usr/sbin:$EPREFIX/sbin"',
    ]:
        assert needle in text
    assert "/usr/bin:/bin" not in text.replace("$EPREFIX/usr/bin:$EPREFIX/bin", "")


def test_startprefix_runs_commands_and_reports_exit_status(tmp_path: Path) -> None:
    """With host tools standing in for the layer's (bin/sh, bin/bash, usr/bin/env), the script's logic runs."""
    root = tmp_path / "layer"
    for rel, host in (("bin/sh", "/bin/sh"), ("bin/bash", "/bin/bash"), ("usr/bin/env", "/usr/bin/env")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(host)
    (root / "usr/lib/locale/C.utf8").mkdir(parents=True)
    write_startprefix(root, str(root), "x86_64-linux-gnu", "C.UTF-8", "debian")
    r = subprocess.run(
        [root / "startprefix", "sh", "-c", 'echo "$PATH|$LANG|$EPREFIX"; exit 4'],
        capture_output=True,
        text=True,
        env={"HOME": "/root", "LANG": "xx_YY.UTF-8", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 4
    path, lang, eprefix = r.stdout.strip().split("|")
    assert path.split(":")[0] == f"{root}/usr/local/bin" and lang == "C.UTF-8" and eprefix == str(root)
    m = LEAVING_RE.search(r.stderr)
    assert m and m.group(1) == str(root) and m.group(2) == "4"
    r = subprocess.run(
        [root / "startprefix"], input="echo from-stdin; exit 0\n", capture_output=True, text=True
    )
    assert r.returncode == 0 and "from-stdin" in r.stdout


@pytest.mark.parametrize(
    ("name", "expected"), [("en_US.UTF-8", "en_US.utf8"), ("de_DE.utf-8", "de_DE.utf8"), ("C", "C")]
)
def test_locale_dirname_normalises_codeset(name: str, expected: str) -> None:
    assert locale_dirname(name) == expected


def test_host_links_replace_packaged_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nsswitch.conf").write_text("packaged")
    assert link_host_files(tmp_path, ["/etc/passwd", "/etc/nsswitch.conf"]) == [
        "etc/passwd",
        "etc/nsswitch.conf",
    ]
    assert os.readlink(tmp_path / "etc" / "nsswitch.conf") == "/etc/nsswitch.conf"


def test_make_links_creates_relative_links_and_refuses_missing_targets(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/gawk").write_text("")
    assert make_links(tmp_path, [Link("usr/bin/awk", "gawk")]) == ["usr/bin/awk"]
    assert os.readlink(tmp_path / "usr/bin/awk") == "gawk"
    with pytest.raises(CompatError, match=r"links\.usr/bin/lua: target lua5\.3 does not exist"):
        make_links(tmp_path, [Link("usr/bin/lua", "lua5.3")])


def _wheel(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def test_install_wheel_unpacks_and_writes_console_scripts(tmp_path: Path) -> None:
    wheel = _wheel(
        tmp_path / "demo_pkg-1.0-py3-none-any.whl",
        {
            "demo_pkg/__init__.py": "def main():\n    return 0\n",
            "demo_pkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n",
            "demo_pkg-1.0.dist-info/entry_points.txt": "[console_scripts]\ndemo = demo_pkg:main\n",
        },
    )
    root = tmp_path / "layer"
    assert install_wheel(root, P, wheel, "demo-pkg==1.0") == ["usr/bin/demo"]
    assert (root / "usr/lib/python3/dist-packages/demo_pkg/__init__.py").is_file()
    script = (root / "usr/bin/demo").read_text()
    assert script.startswith(f"#!{P}/usr/bin/python3\n") and "from demo_pkg import main" in script
    assert os.access(root / "usr/bin/demo", os.X_OK)
    assert (
        cached_wheel(tmp_path, "demo-pkg==1.0") == wheel and cached_wheel(tmp_path, "demo-pkg==2.0") is None
    )


def test_install_wheel_refuses_platform_wheels_and_escaping_members(tmp_path: Path) -> None:
    plat = _wheel(tmp_path / "p-1-cp311-x.whl", {"p-1.dist-info/WHEEL": "Root-Is-Purelib: false\n"})
    with pytest.raises(CompatError, match="not a pure-Python wheel"):
        install_wheel(tmp_path / "l", P, plat, "p==1")
    evil = _wheel(
        tmp_path / "e-1-py3-none-any.whl",
        {"e-1.dist-info/WHEEL": "Root-Is-Purelib: true\n", "../../../etc/x": "x"},
    )
    with pytest.raises(CompatError, match="escapes the install directory"):
        install_wheel(tmp_path / "l", P, evil, "e==1")


def test_console_scripts_parse_entry_points() -> None:
    cs = console_scripts(
        "[console_scripts]\narchspec = archspec.cli:main\nTool = a.b:c.d [extra]\n[other]\nx = y\n"
    )
    assert [(c.name, c.module, c.function) for c in cs] == [
        ("archspec", "archspec.cli", "main"),
        ("Tool", "a.b", "c.d"),
    ]
    assert "sys.exit(c.d())" in console_script(P, cs[1], "t==1") and "from a.b import c" in console_script(
        P, cs[1], "t==1"
    )
