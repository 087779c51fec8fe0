"""What a dynamic loader says about ELF files (``ld.so --list``), read back per file.

The compat layer's checks and the software layer's link check both run a small script with the
layer's bash: for each file it prints ``@@ELF <path>``, the loader's ``--list`` output and
``@@RC <status>``; :func:`parse_list_output` splits that per file into the libraries found (with
their resolved paths, or None when not found).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass

LIST_MARK = "@@ELF "
LIST_RC = "@@RC "
#: bash script: ``bash -c ARGS_SCRIPT bash LOADER FILE...`` lists each FILE with LOADER
ARGS_SCRIPT = (
    'loader=$1; shift; for f in "$@"; do printf "' + LIST_MARK + '%s\\n" "$f"; '
    '"$loader" --list "$f" </dev/null 2>&1; printf "' + LIST_RC + '%s\\n" "$?"; done'
)
#: the same, with the file names on stdin (one per line): ``bash -c STDIN_SCRIPT bash LOADER``
STDIN_SCRIPT = (
    'while IFS= read -r f; do printf "%s%s\\n" "' + LIST_MARK + '" "$f"; '
    '"$1" --list "$f" 2>&1 </dev/null; printf "' + LIST_RC + '%s\\n" "$?"; done'
)


@dataclass(frozen=True, slots=True)
class Listing:
    """``ld.so --list`` of one file: its exit status and (library, resolved path or None) pairs."""

    rc: int
    libraries: tuple[tuple[str, str | None], ...]
    text: str

    def stray(self, inside: Callable[[str], bool]) -> list[tuple[str, str | None]]:
        """The libraries not found (path None) or resolved to a path ``inside`` refuses, in order."""
        return [(name, path) for name, path in self.libraries if path is None or not inside(path)]


def parse_list_output(text: str) -> dict[str, Listing]:
    """Split the listing scripts' output per file (pure)."""
    out: dict[str, Listing] = {}
    current: str | None = None
    libs: list[tuple[str, str | None]] = []
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith(LIST_MARK):
            current, libs, lines = line[len(LIST_MARK) :], [], []
        elif current is not None and line.startswith(LIST_RC):
            rc = line[len(LIST_RC) :].strip()
            out[current] = Listing(int(rc) if rc.isdigit() else 1, tuple(libs), "\n".join(lines))
            current = None
        elif current is not None:
            lines.append(line)
            s = line.strip()
            if "=>" in s:
                name, _, rest = s.partition("=>")
                rest = rest.strip()
                path = None if rest.startswith("not found") else rest.split(" (", 1)[0].strip() or None
                libs.append((name.strip(), path))
            elif s.startswith("/"):  # the loader itself: "/path/ld-linux-x86-64.so.2 (0x…)"
                path = s.split(" (", 1)[0]
                libs.append((posixpath.basename(path), path))
    return out
