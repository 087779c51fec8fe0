"""Package sets are YAML checked by a JSON schema and by consistency checks; errors name file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eessi_pipeline.compat.packageset import REQUIRED_PACKAGES, load_package_set
from eessi_pipeline.errors import CompatError

GOOD = Path(__file__).resolve().parent.parent / "matrices" / "compat" / "x86_64.yaml"


def test_packageset_x86_64_loads_with_every_required_package() -> None:
    p = load_package_set("x86_64")
    assert p.family == "x86_64" and p.debian.architecture == "amd64"
    assert {x.lower() for x in REQUIRED_PACKAGES} <= {x.name.lower() for x in p.packages}
    assert "libc6" in p.debian_packages and "lmod" in p.debian_packages
    assert p.pypi_requirements == ("archspec==0.2.7",)
    assert "sys-libs/glibc" in p.gentoo_atoms and all("/" in a for a in p.gentoo_atoms)
    assert all(t.command for t in p.tools) and len(p.tools) >= 20
    assert "/etc/passwd" in p.host_files and p.locales == ("en_US.UTF-8",)


def test_packageset_unknown_family_names_the_known_ones() -> None:
    with pytest.raises(CompatError, match=r"no package set for family 'sparc'.*known: .*x86_64"):
        load_package_set("sparc")


def _write(tmp_path: Path, mutate, name: str = "x86_64.yaml") -> Path:
    data = yaml.safe_load(GOOD.read_text())
    mutate(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _pkg(data, name):
    return next(p for p in data["packages"] if p["name"] == name)


BAD = [
    (
        "missing-debian",
        lambda d: d.pop("debian"),
        r"\(top level\): 'debian' is a required property; fix: add `debian`",
    ),
    (
        "unknown-key",
        lambda d: d.update(extra=1),
        r"Additional properties.*'extra'.*fix: remove it, or use one of",
    ),
    ("bad-family", lambda d: d.update(family="x86"), r"family: 'x86' is not one of"),
    (
        "tool-without-command",
        lambda d: _pkg(d, "tar")["tools"].append({"args": ["x"]}),
        r"packages\[\d+\] \(tar\)\.tools\[1\]: 'command' is a required property",
    ),
    (
        "package-without-source",
        lambda d: [_pkg(d, "sed").pop("debian")],
        r"packages\[\d+\] \(sed\).*not valid under any of the given schemas; fix: give the package `debian`",
    ),
    (
        "bad-atom",
        lambda d: _pkg(d, "bash").update(gentoo=["bash"]),
        r"\(bash\)\.gentoo\[0\]: 'bash' does not match",
    ),
    (
        "unpinned-pypi",
        lambda d: _pkg(d, "archspec").update(pypi=["archspec"]),
        r"a pinned requirement NAME==VERSION",
    ),
    (
        "duplicate-name",
        lambda d: d["packages"].append(dict(_pkg(d, "gzip"))),
        r"\.name: 'gzip' repeats packages\[\d+\]",
    ),
    (
        "bad-regex",
        lambda d: _pkg(d, "xz")["tools"][0].update(expect="XZ ("),
        r"\(xz\)\.tools\[0\]\.expect: 'XZ \(' is not a regular expression.*fix: escape",
    ),
    (
        "host-file-not-allowed",
        lambda d: d["host_files"].append("/etc/shadow"),
        r"host_files: '/etc/shadow' is not a host file compat tarballs may link to",
    ),
    (
        "excluded-and-wanted",
        lambda d: d["debian"]["exclude"].update({"bash": "no"}),
        r"\(bash\)\.debian: 'bash' is also under debian.exclude",
    ),
    (
        "link-escapes",
        lambda d: d["links"].update({"usr/bin/x": "../../../etc/shadow"}),
        r"links\.usr/bin/x: target '\.\./\.\./\.\./etc/shadow' resolves outside the layer",
    ),
    (
        "missing-required",
        lambda d: d.update(packages=[p for p in d["packages"] if p["name"] != "Lmod"]),
        r"packages: the layer lacks Lmod; fix: add an entry",
    ),
]


@pytest.mark.parametrize(("mutate", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_packageset_bad_file_is_refused_naming_file_key_and_fix(tmp_path: Path, mutate, message: str) -> None:
    path = _write(tmp_path, mutate)
    with pytest.raises(CompatError, match=message) as exc:
        load_package_set(path)
    assert str(path) in str(exc.value)


def test_packageset_family_must_match_file_name(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda d: None, name="aarch64.yaml")
    with pytest.raises(CompatError, match=r"family: 'x86_64' differs from the file name 'aarch64.yaml'"):
        load_package_set(path)


def test_packageset_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "x86_64.yaml"
    path.write_text("schema_version: 1\nfamily: [x86_64\n")
    with pytest.raises(CompatError, match=r"x86_64.yaml:\d+:\d+: invalid YAML"):
        load_package_set(path)


def test_packageset_duplicate_yaml_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "x86_64.yaml"
    path.write_text(GOOD.read_text() + "\nfamily: x86_64\n")
    with pytest.raises(CompatError, match=r"duplicate key 'family'"):
        load_package_set(path)
