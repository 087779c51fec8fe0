"""Dependency closure and apt output parsing (pure), and the private apt argument vectors."""

from __future__ import annotations

from pathlib import Path

import pytest

from eessi_pipeline.compat.apt import (
    Alternative,
    Apt,
    DebFile,
    file_ok,
    parse_depends,
    parse_print_uris,
    resolve,
)
from eessi_pipeline.errors import CompatError

# Recorded `apt-cache depends --no-recommends … tzdata python3.11 awk` on Debian 12.
DEPENDS = """\
tzdata
 |Depends: debconf
  Depends: <debconf-2.0>
    cdebconf
    debconf
python3.11
  Depends: python3.11-minimal
  Depends: libpython3.11-stdlib
 |Depends: media-types
  Depends: mime-support
  Breaks: python3-all
<awk>
lmod
  Depends: <awk>
    gawk
    mawk
  Depends: libc6
"""


def test_apt_parse_depends_groups_alternatives_and_virtual_providers() -> None:
    d = parse_depends(DEPENDS)
    assert d["tzdata"] == [
        [Alternative("debconf"), Alternative("debconf-2.0", True, ("cdebconf", "debconf"))]
    ]
    assert d["python3.11"] == [
        [Alternative("python3.11-minimal")],
        [Alternative("libpython3.11-stdlib")],
        [Alternative("media-types"), Alternative("mime-support")],
    ]
    assert d["lmod"][0] == [Alternative("awk", True, ("gawk", "mawk"))]
    assert "<awk>" not in d and "awk" not in d


def _query(table: dict[str, list[list[str]]]):
    def q(pkgs):
        return {
            p: [
                [
                    Alternative(
                        n.strip("<>"),
                        n.startswith("<"),
                        tuple(table.get(n, [[]])[0]) if n.startswith("<") else (),
                    )
                    for n in grp
                ]
                for grp in table[p]
            ]
            for p in pkgs
            if p in table
        }

    return q


def test_apt_resolve_takes_first_alternative_skips_satisfied_and_excluded() -> None:
    table = {
        "app": [["liba"], ["debconf", "<debconf-2.0>"], ["mawk", "gawk"]],
        "liba": [["libc6"]],
        "libc6": [],
        "mawk": [["libc6"]],
        "<debconf-2.0>": [["cdebconf"]],
    }
    c = resolve(["app"], _query(table), excluded=["debconf"])
    assert c.packages == ("app", "liba", "libc6", "mawk")
    assert c.skipped == {"debconf": "app"}
    assert c.why("libc6") == "libc6 <- liba <- app"
    assert c.why("gawk") == "gawk is not in the layer"


def test_apt_resolve_provider_of_a_virtual_group() -> None:
    table = {"lmod": [["<awk>"]], "<awk>": [["gawk", "mawk"]], "gawk": []}
    assert resolve(["lmod"], _query(table)).packages == ("gawk", "lmod")


def test_apt_resolve_unknown_package_names_the_fix() -> None:
    with pytest.raises(CompatError, match=r"apt knows no package nope.*--refresh"):
        resolve(["nope"], _query({}))


def test_apt_resolve_root_both_wanted_and_excluded_is_refused() -> None:
    with pytest.raises(CompatError, match="both asked for and excluded"):
        resolve(["bash"], _query({"bash": []}), excluded=["bash"])


def test_apt_parse_print_uris_reads_name_size_and_sha256() -> None:
    text = (
        "'http://deb.debian.org/debian/pool/main/b/bash/bash_5.2.15-2%2bb13_amd64.deb' "
        "bash_5.2.15-2+b13_amd64.deb 1490652 SHA256:82130bb6a560cd2a7234d8018baf73f188f5dd56413d5aa0accc987b2197a6a1\n"
        "'http://x/gawk_1%3a5.2.1-2_amd64.deb' gawk_1%3a5.2.1-2_amd64.deb 10 MD5Sum:abc\nnoise\n"
    )
    bash, gawk = parse_print_uris(text)
    assert (bash.package, bash.version, bash.size) == ("bash", "5.2.15-2+b13", 1490652)
    assert bash.sha256 and bash.sha256.startswith("82130bb6")
    assert (gawk.package, gawk.version, gawk.sha256) == ("gawk", "1:5.2.1-2", None)


def test_apt_file_ok_checks_size_and_hash(tmp_path: Path) -> None:
    import hashlib

    f = tmp_path / "a.deb"
    f.write_bytes(b"payload")
    good = DebFile("u", "a.deb", 7, hashlib.sha256(b"payload").hexdigest())
    assert file_ok(f, good)
    assert not file_ok(f, DebFile("u", "a.deb", 7, "0" * 64))
    assert not file_ok(f, DebFile("u", "a.deb", 8, None))
    assert not file_ok(tmp_path / "missing.deb", good)


def test_apt_argv_uses_private_state_and_architecture(tmp_path: Path) -> None:
    a = Apt(tmp_path, "arm64")
    argv = a.depends_argv(["bash"])
    assert argv[0] == "apt-cache" and argv[-1] == "bash" and "--no-recommends" in argv
    joined = " ".join(a.options())
    assert f"Dir::State={tmp_path}/state" in joined and "APT::Architecture=arm64" in joined
    assert f"Dir::State::status={tmp_path}/status" in joined
    assert a.download_argv(["bash=1"])[-2:] == ["download", "bash=1"]
    assert a.uris_argv(["x"])[-3:] == ["download", "--print-uris", "x"]
