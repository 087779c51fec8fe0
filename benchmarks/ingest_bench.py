"""Ingest benchmarks against the machine's own limit, measured in the same run.

* A tarball of real software files — this machine's own libraries, programs and documentation
  (``/usr/lib``, ``/usr/bin``, ``/usr/share/doc`` …), at least 200 MB and 5,000 files, laid out and
  named as an EESSI software tarball — is ingested with ``Repository.ingest(check=True)`` (the full
  one-pass check + ingest, as publish runs it) on 1, 2, … cores (``taskset``), each against the
  limit on the same cores: zlib level 6 + SHA-1 of every file's content, in memory, in as many
  processes as cores.
* Peak RSS of an ingest of a tarball with one 2 GiB member (``ru_maxrss`` of the ingesting process).

Standalone: ``python benchmarks/ingest_bench.py --cores-list 1,2,4,8,16 --json out.json``;
``benchmarks/run.py`` (``tox -e bench``) runs it with ``--cores-list 1,2``.  Every measurement runs
in a fresh child process pinned with ``taskset``, in ``--repeat`` rounds over all core counts; times are
the best of the rounds for the limit and the ingest alike (the machine may be shared).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAME = "software.eessi.local"
PREFIX = "2023.06/software/linux/x86_64/generic"
STAMP = 1700000000
TARBALL = f"eessi-2023.06-software-linux-x86_64-generic-{STAMP}.tar.gz"
BIG_TARBALL = f"eessi-2023.06-software-linux-x86_64-generic-{STAMP + 1}.tar.zst"
SOURCES = ("/usr/lib", "/usr/bin", "/usr/libexec", "/usr/share/doc", "/usr/share/man", "/usr/share/locale")
ZLIB_LEVEL = 6


def log(msg: str) -> None:
    print(f"[ingest-bench] {msg}", file=sys.stderr, flush=True)


# -- tarballs ----------------------------------------------------------------------------------------


def _candidates(min_bytes: int, min_files: int, max_file: int = 16 << 20) -> list[Path]:
    """Regular files (and same-directory symlinks) of the machine's software, in a stable order,
    mixed like a software stack (many small files, some large libraries): at least ``min_files``
    files and ``min_bytes`` bytes."""
    small: list[Path] = []
    large: list[Path] = []
    links: list[Path] = []
    for top in SOURCES:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    if p.is_symlink():
                        target = os.readlink(p)
                        if "/" not in target and (Path(dirpath) / target).is_file():
                            links.append(p)
                        continue
                    st = p.stat()
                    if p.is_file() and 0 < st.st_size <= max_file and os.access(p, os.R_OK):
                        (small if st.st_size < 64 * 1024 else large).append(p)
    step = max(1, len(small) // int(min_files * 0.9))
    picked = small[::step]
    total = sum(p.stat().st_size for p in picked)
    stride = max(1, int(sum(p.stat().st_size for p in large) / max(1, min_bytes - total)))
    for p in large[::stride]:
        picked.append(p)
        total += p.stat().st_size
    for p in large:
        if total >= min_bytes and len(picked) >= min_files:
            break
        if p not in picked:
            picked.append(p)
            total += p.stat().st_size
    names = {p for p in picked}
    picked.extend(p for p in links if p.parent / os.readlink(p) in names)
    return sorted(picked)


def real_software_tarball(work: Path, min_mb: int = 220, min_files: int = 5000) -> dict[str, Any]:
    """An EESSI software tarball of this machine's own software (cached in ``work``)."""
    path = work / TARBALL
    meta = work / "real-tarball.json"
    if path.exists() and meta.exists():
        return dict(json.loads(meta.read_text()))
    log(f"building {path.name} from {', '.join(SOURCES)} (>= {min_mb} MB, >= {min_files} files)")
    picked = _candidates(min_mb * 1_000_000, min_files)
    dirs: set[str] = set()
    size = files = links = 0
    tmp = path.with_suffix(".part")
    with tarfile.open(tmp, "w:gz", compresslevel=6, format=tarfile.GNU_FORMAT) as tf:
        for part in range(1, 6):
            d = tarfile.TarInfo("/".join(PREFIX.split("/")[:part]))
            d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, STAMP
            tf.addfile(d)
        for p in picked:
            pkg = p.parts[2] if len(p.parts) > 3 else "misc"
            rel = f"{PREFIX}/software/{pkg}/1.0/{'/'.join(p.parts[1:])}"
            parents = rel.split("/")
            for i in range(6, len(parents)):
                d_name = "/".join(parents[:i])
                if d_name not in dirs:
                    dirs.add(d_name)
                    d = tarfile.TarInfo(d_name)
                    d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, STAMP
                    tf.addfile(d)
            info = tarfile.TarInfo(rel)
            info.mtime = STAMP
            if p.is_symlink():
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(p), 0o777
                tf.addfile(info)
                links += 1
                continue
            data = p.read_bytes()
            info.size, info.mode = len(data), 0o755 if os.access(p, os.X_OK) else 0o644
            tf.addfile(info, io.BytesIO(data))
            size += len(data)
            files += 1
    os.replace(tmp, path)
    out = {
        "path": str(path),
        "files": files,
        "symlinks": links,
        "bytes": size,
        "tarball_bytes": path.stat().st_size,
    }
    meta.write_text(json.dumps(out))
    return out


def big_member_tarball(work: Path, gib: float) -> Path:
    """A tarball with one member of ``gib`` GiB of software-like bytes: .tar.zst built with the system's
    zstd, or .tar.gz with its gzip -1 where there is no zstd."""
    zstd = shutil.which("zstd")
    path = work / (BIG_TARBALL if zstd else BIG_TARBALL.replace(".tar.zst", ".tar.gz"))
    if path.exists():
        return path
    size = int(gib * 1024**3)
    log(f"building {path.name} with a {size} byte member")
    rng = random.Random(5)
    words = [
        bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 10)))
        for _ in range(2000)
    ]
    text = b" ".join(rng.choice(words) for _ in range(400_000))[: 1 << 20]
    block = bytearray()
    for i in range(16):  # 16 MiB pattern: text, random and zero stretches
        block += text if i % 3 == 0 else rng.randbytes(1 << 20) if i % 3 == 1 else b"\0" * (1 << 20)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as raw:
        cmd = [zstd, "-q", "-1", "-T0", "-c"] if zstd else ["gzip", "-1", "-c"]
        packer = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=raw)
        assert packer.stdin is not None
        with tarfile.open(fileobj=packer.stdin, mode="w|", format=tarfile.GNU_FORMAT) as tf:
            for part in range(1, 6):
                d = tarfile.TarInfo("/".join(PREFIX.split("/")[:part]))
                d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, STAMP
                tf.addfile(d)
            info = tarfile.TarInfo(f"{PREFIX}/huge.bin")
            info.size, info.mode, info.mtime = size, 0o644, STAMP

            class _Pattern:
                def __init__(self) -> None:
                    self.left = size
                    self.pos = 0
                    self.n = 0

                def read(self, n: int = -1) -> bytes:
                    n = min(self.left if n < 0 else n, self.left, len(block) - self.pos)
                    out = bytes(block[self.pos : self.pos + n])
                    self.pos = (self.pos + n) % len(block)
                    self.left -= n
                    self.n += 1
                    return out[:-8] + self.n.to_bytes(8, "little") if n >= 8 else out  # no two pieces alike

            tf.addfile(info, _Pattern())
        packer.stdin.close()
        if packer.wait() != 0:
            raise SystemExit(f"{cmd[0]} failed")
    os.replace(tmp, path)
    return path


# -- measurements (run in pinned children) ---------------------------------------------------------

_CONTENTS: list[bytes] = []


def _compress_hash(indices: list[int]) -> float:
    """CPU seconds to compress and hash these contents."""
    t = time.process_time()
    for i in indices:
        hashlib.sha1(zlib.compress(_CONTENTS[i], ZLIB_LEVEL)).digest()
    return time.process_time() - t


def child_limit(tarball: Path, repeat: int) -> dict[str, Any]:
    """zlib-6 + SHA-1 of every file's content, in memory, one process per usable core."""
    global _CONTENTS
    cores = len(os.sched_getaffinity(0))
    with tarfile.open(tarball) as tf:
        _CONTENTS = [tf.extractfile(m).read() for m in tf if m.isreg()]  # type: ignore[union-attr]
    order = sorted(range(len(_CONTENTS)), key=lambda i: -len(_CONTENTS[i]))
    batches: list[list[int]] = [[] for _ in range(cores * 16)]
    loads = [0] * len(batches)
    for i in order:  # largest first onto the lightest batch
        k = loads.index(min(loads))
        batches[k].append(i)
        loads[k] += len(_CONTENTS[i])
    times = []
    cpu = []
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        pool.map(_compress_hash, [[0]] * cores)
        for _ in range(repeat):
            t = time.perf_counter()
            cpu.append(sum(pool.map(_compress_hash, batches, chunksize=1)))
            times.append(time.perf_counter() - t)
    return {
        "cores": cores, "seconds": min(times), "all": times, "cpu_s": min(cpu),
        "bytes": sum(len(c) for c in _CONTENTS),
    }  # fmt: skip


def child_ingest(tarball: Path, state: Path, check: bool, chunking: bool) -> dict[str, Any]:
    from eessi_pipeline.cvmfs.repository import Repository

    repo = Repository(state, NAME)
    repo.init()
    t = time.perf_counter()
    cpu = time.process_time()
    result = repo.ingest(tarball, check=check, chunking=chunking)
    seconds = time.perf_counter() - t
    cpu = time.process_time() - cpu
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the small-file worker processes
    return {
        "cores": len(os.sched_getaffinity(0)),
        "seconds": seconds,
        "cpu_s": cpu,
        "files": result.files_added,
        "objects": result.objects_written,
        "max_rss_mb": rss_kib / 1024,
        "children_cpu_s": children.ru_utime + children.ru_stime,
        "children_max_rss_mb": children.ru_maxrss / 1024,  # the largest one child reached
    }


_RUNS = 0


#: ext4 without a journal (this machine's root) skips each free inode deleted less than 60 s ago
#: (300 s while its inode table block is not yet written back) when it allocates one: an ingest
#: started right after thousands of objects were deleted paid up to 25 times the kernel time per
#: new object (measured: 4,693 small objects, 2.4 s instead of 0.1 s of system time).
RECENTLY_DELETED_S = 61
_DELETED_MARK = ".states-deleted-at"


def _forget_states(work: Path) -> None:
    """Delete the runs' state directories, write the deletions back (so ext4's shorter window
    applies) and note when, for the next benchmark in this work directory to wait it out."""
    states = work / "states"
    if not states.exists():
        return
    shutil.rmtree(states, ignore_errors=True)
    os.sync()
    (work / _DELETED_MARK).write_text(f"{time.time()}\n")


def _settle(work: Path) -> None:
    """Wait until deletions in ``work`` (this or an earlier benchmark's) no longer slow allocations."""
    try:
        deleted = float((work / _DELETED_MARK).read_text())
    except (OSError, ValueError):
        return
    wait = deleted + RECENTLY_DELETED_S - time.time()
    if wait > 0:
        log(f"waiting {wait:.0f} s: files were deleted here just now; ext4 skips such inodes for a minute")
        time.sleep(wait)


def _state_dir(work: Path) -> Path:
    """A new, empty state directory for one ingest run.

    Runs are not cleaned up until the benchmark ends (see :data:`RECENTLY_DELETED_S`): deleting the
    previous run's objects would slow the next run's file creation, depending on what was deleted
    when, not on the ingest.
    """
    global _RUNS
    _RUNS += 1
    return work / "states" / f"run-{_RUNS}"


def _pinned(cores: int, args: list[str]) -> dict[str, Any]:
    os.sync()  # the previous run's dirty pages are not written back during this one
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    if len(cpus) < cores:
        raise SystemExit(f"asked for {cores} cores, this process may use {len(cpus)}")
    cmd = ["taskset", "-c", ",".join(map(str, cpus)), sys.executable, __file__, *args]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def run(work: Path, cores_list: list[int], repeat: int, rss_gib: float, min_mb: int) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    _forget_states(work)  # an interrupted run's
    tb = real_software_tarball(work, min_mb)
    _settle(work)
    tarball = Path(tb["path"])
    res: dict[str, Any] = {
        "machine": {
            "cpu": _cpu_model(),
            "usable_cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "load_before": os.getloadavg(),
        },
        "tarball": tb,
        "cores": {},
    }  # fmt: skip
    limits: dict[int, list[dict[str, Any]]] = {k: [] for k in cores_list}
    ingests: dict[int, list[dict[str, Any]]] = {k: [] for k in cores_list}
    for i in range(repeat):  # rounds over every core count, so a change in load hits them all alike
        for k in cores_list:
            log(f"round {i + 1}/{repeat}, {k} core(s): limit, then ingest")
            limits[k].append(_pinned(k, ["_limit", str(tarball), "1"]))
            ingests[k].append(_pinned(k, ["_ingest", str(tarball), str(_state_dir(work)), "check"]))
    for k in cores_list:
        limit = min(limits[k], key=lambda r: r["seconds"])
        best = min(ingests[k], key=lambda r: r["seconds"])
        res["cores"][str(k)] = {
            "limit_s": limit["seconds"],
            "limit_all_s": [r["seconds"] for r in limits[k]],
            "limit_cpu_s": limit["cpu_s"],
            "ingest_s": best["seconds"],
            "ingest_all_s": [r["seconds"] for r in ingests[k]],
            "ingest_cpu_s": best["cpu_s"],
            "ratio_limit_over_ingest": limit["seconds"] / best["seconds"],
            "ingest_mb_s": tb["bytes"] / best["seconds"] / 1e6,
            "max_rss_mb": best["max_rss_mb"],
        }
        log(f"{k} core(s): limit {limit['seconds']:.2f} s, ingest {best['seconds']:.2f} s")
    if "1" in res["cores"]:
        one = res["cores"]["1"]["ingest_s"]
        res["speedup_vs_1_core"] = {k: one / v["ingest_s"] for k, v in res["cores"].items()}
    if rss_gib > 0:
        big = big_member_tarball(work, rss_gib)
        k = min(2, max(cores_list))
        for chunking in (True, False):
            log(f"peak RSS: {rss_gib} GiB member, chunking {'on' if chunking else 'off'}, {k} cores")
            mode = "nocheck" if chunking else "nochunk"
            r = _pinned(k, ["_ingest", str(big), str(_state_dir(work)), mode])
            res[f"big_member_{'chunked' if chunking else 'whole'}"] = {
                "member_bytes": int(rss_gib * 1024**3), "tarball_bytes": big.stat().st_size, **r
            }  # fmt: skip
    res["machine"]["load_after"] = os.getloadavg()
    _forget_states(work)
    return res


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_limit":
        print(json.dumps(child_limit(Path(argv[1]), int(argv[2]))))
        return 0
    if argv and argv[0] == "_ingest":
        mode = argv[3]
        print(json.dumps(child_ingest(Path(argv[1]), Path(argv[2]), mode == "check", mode != "nochunk")))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--cores-list", default="1,2", help="comma-separated core counts, e.g. 2,4,8,16")
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best counts")
    ap.add_argument("--rss-gib", type=float, default=2.0, help="size of the big member (0: skip)")
    ap.add_argument("--min-mb", type=int, default=220, help="size of the real-software tarball")
    ap.add_argument("--work", type=Path, help="scratch directory, reused between runs (default: temporary)")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args(argv)
    cores = [int(c) for c in args.cores_list.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="eessi-ingest-bench-") as tmp:
        res = run(args.work or Path(tmp), cores, args.repeat, args.rss_gib, args.min_mb)
    text = json.dumps(res, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
