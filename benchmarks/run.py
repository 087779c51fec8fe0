"""Benchmarks of eessi-pipeline against the limits of the machine they run on (``tox -e bench``).

Every number is a ratio to something measured in the same run on the same machine:

* ingest (``ingest_bench.py``): a tarball of this machine's own software (>= 200 MB, >= 5,000
  files) through the one-pass check + ingest on 1 and 2 cores (``taskset``), each against zlib
  level 6 + SHA-1 of the same contents on the same cores (aim: at least 0.8; 2 cores at least
  1.7 x 1 core), and the peak RSS of an ingest of a tarball with a 2 GiB member (aim: < 512 MB);
* incremental publish: one small package into repositories of N files, against an empty one
  (aim: at most 2);
* Stratum 1 snapshot after that small change: bytes downloaded against the bytes of new objects;
* client: cold read through squid, warm read from the client cache, against reading the same
  files from local disk;
* start-up: sourcing ``versions/<v>/init/bash`` and ``eessi-pipeline detect``;
* ``--full`` only: the test suite with ``-n auto`` against ``-n 0``.

Writes ``benchmarks/results/latest.json`` and ``docs/benchmarks.md``.  ``--quick`` (about 20 MB,
repositories of 1k and 10k files) is a smoke run for CI; the default (at least 200 MB, 10k and
100k files) takes some minutes on two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import io
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eessi_pipeline.cvmfs.client import ClientConfig, open_client  # noqa: E402
from eessi_pipeline.cvmfs.replica import snapshot  # noqa: E402
from eessi_pipeline.cvmfs.repository import Repository  # noqa: E402

NAME = "software.eessi.local"
VERSION = "2023.06"
SUBDIR = "x86_64/generic"
PREFIX = f"{VERSION}/software/linux/{SUBDIR}"
STAMP = 1700000000
ZLIB_LEVEL = 6

# -- the machine ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "cpu_model": model,
        "cores": os.cpu_count() or 1,
        "memory_gib": round(mem_kib / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


# -- generated software tarballs ------------------------------------------------------------------------


class Corpus:
    """Software-like bytes: identifier-heavy text and part-random, part-structured binaries."""

    def __init__(self, seed: int = 1) -> None:
        rng = random.Random(seed)
        words = [
            "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 12)))
            for _ in range(3000)
        ]
        lines = []
        size = 0
        while size < 8 * 1024 * 1024:
            line = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) + ";\n"
            lines.append(line)
            size += len(line)
        self.text = "".join(lines).encode()
        parts = []
        for _ in range(256):  # 32 KiB blocks: random code, tables of small integers, zero padding
            kind = rng.random()
            if kind < 0.4:
                parts.append(rng.randbytes(32768))
            elif kind < 0.8:
                parts.append(bytes(rng.choice(range(16)) * 16 + rng.randrange(16) for _ in range(32768)))
            else:
                parts.append(b"\0" * 30000 + rng.randbytes(2768))
        self.binary = b"".join(parts)
        self.rng = rng

    def file(self, size: int, text: bool) -> bytes:
        src = self.text if text else self.binary
        out = [self.rng.randbytes(16)]  # unique: no two files deduplicate
        need = size - 16
        while need > 0:
            take = min(need, len(src) // 2)
            at = self.rng.randrange(0, len(src) - take)
            out.append(src[at : at + take])
            need -= take
        return b"".join(out)[:size]


def _add(tf: tarfile.TarFile, name: str, data: bytes | None, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = STAMP
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(info)
    else:
        info.size, info.mode = len(data), mode
        tf.addfile(info, io.BytesIO(data))


def _tarball_name(stamp: int = STAMP) -> str:
    return f"eessi-{VERSION}-software-linux-{SUBDIR.replace('/', '-')}-{stamp}.tar.gz"


def _layout_dirs(tf: tarfile.TarFile, dirs: set[str]) -> None:
    parts = PREFIX.split("/")
    for i in range(1, len(parts) + 1):
        _add(tf, "/".join(parts[:i]), None)
    for d in sorted(dirs):
        _add(tf, f"{PREFIX}/{d}", None)


def realistic_tarball(directory: Path, total_bytes: int, seed: int = 1) -> tuple[Path, list[bytes]]:
    """Thousands of files of mixed sizes in EESSI's layout; returns the tarball and the file contents."""
    corpus = Corpus(seed)
    rng = random.Random(seed + 1)
    files: list[tuple[str, bytes, int]] = []
    dirs: set[str] = set()
    size = 0
    pkg = 0
    while size < total_bytes:
        name, ver = f"pkg{pkg:03d}", f"{rng.randint(1, 9)}.{rng.randint(0, 20)}"
        root = f"software/{name}/{ver}"
        dirs.update(
            {
                f"software/{name}",
                root,
                f"{root}/bin",
                f"{root}/lib",
                f"{root}/include",
                f"{root}/share/doc",
                "modules/all",
                f"modules/all/{name}",
            }
        )
        files.append((f"modules/all/{name}/{ver}.lua", corpus.file(rng.randint(400, 3000), True), 0o644))
        for i in range(rng.randint(60, 160)):  # headers, docs, scripts
            sub = rng.choice(["include", "share/doc", "bin"])
            files.append(
                (
                    f"{root}/{sub}/f{i}",
                    corpus.file(int(rng.lognormvariate(8.0, 1.2)) + 1, True),
                    0o755 if sub == "bin" else 0o644,
                )
            )
        for i in range(rng.randint(3, 12)):  # shared objects and programs
            big = rng.random() < 0.04
            n = rng.randint(5 * 1024**2, 24 * 1024**2) if big else int(rng.lognormvariate(12.0, 1.3))
            files.append((f"{root}/lib/lib{i}.so", corpus.file(max(n, 1), False), 0o755))
        size = sum(len(d) for _, d, _ in files)
        pkg += 1
    path = directory / _tarball_name()
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        _layout_dirs(tf, dirs)
        for rel, data, mode in files:
            _add(tf, f"{PREFIX}/{rel}", data, mode)
    return path, [d for _, d, _ in files]


def many_files_tarball(directory: Path, n_files: int, per_package: int = 100, tag: str = "base") -> Path:
    """``n_files`` small files in packages of ``per_package`` (one nested catalog each, by the dirtab)."""
    path = directory / _tarball_name(STAMP + n_files)
    dirs: set[str] = set()
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        members = []
        for i in range(n_files):
            p = i // per_package
            root = f"software/{tag}{p:05d}/1.0"
            dirs.update({f"software/{tag}{p:05d}", root, f"{root}/lib"})
            members.append((f"{root}/lib/f{i}", f"{tag} {i}\n".encode()))
        _layout_dirs(tf, dirs)
        for rel, data in members:
            _add(tf, f"{PREFIX}/{rel}", data)
    return path


def small_package_tarball(directory: Path, name: str) -> Path:
    d = directory / name
    d.mkdir(parents=True, exist_ok=True)
    root = f"software/{name}/1.0"
    path = d / _tarball_name()
    with tarfile.open(path, "w:gz") as tf:
        _layout_dirs(
            tf, {f"software/{name}", root, f"{root}/bin", f"{root}/lib", "modules/all", f"modules/all/{name}"}
        )
        _add(tf, f"{PREFIX}/{root}/bin/{name}", b"#!/bin/sh\necho " + name.encode() + b"\n", 0o755)
        _add(tf, f"{PREFIX}/{root}/lib/lib{name}.so", random.Random(name).randbytes(64 * 1024))
        _add(tf, f"{PREFIX}/modules/all/{name}/1.0.lua", b"-- module " + name.encode() + b"\n")
    return path


# -- the machine's limit: zlib-6 + SHA-1 on all cores ------------------------------------------------------

# -- small helpers -------------------------------------------------------------------------------------------


def median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def object_files(repo: Repository) -> dict[str, int]:
    data = repo.paths.root / "data"
    return {
        str(p.relative_to(data)): p.stat().st_size
        for p in data.rglob("*")
        if p.is_file() and p.parent.name != "txn"
    }


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- the benchmarks ------------------------------------------------------------------------------------------


def bench_ingest(work: Path, total_mb: int, quick: bool) -> dict[str, Any]:
    """Real software files on 1 and 2 cores against the limit on the same cores, and the peak RSS of
    a 2 GiB member (see benchmarks/ingest_bench.py, which also runs standalone)."""
    import ingest_bench

    cores = sorted({1, min(2, len(os.sched_getaffinity(0)))})
    return ingest_bench.run(
        work / "ingest", cores, repeat=1 if quick else 2, rss_gib=0.25 if quick else 2.0, min_mb=total_mb
    )


def bench_incremental(work: Path, sizes: list[int], repeat: int) -> tuple[dict[str, Any], Path]:
    """Returns the results and the state dir of the largest-but-first repository (for the snapshot)."""
    out: dict[str, Any] = {}
    keep: Path | None = None
    for n in [0, *sizes]:
        state = work / f"inc{n}"
        repo = Repository(state, NAME)
        repo.init()
        if n:
            log(f"building a repository of {n} files")
            tb = many_files_tarball(work, n)
            t = time.perf_counter()
            repo.ingest(tb)
            build_s = time.perf_counter() - t
            tb.unlink()
        else:
            build_s = 0.0
        times = []
        for r in range(repeat):
            tb = small_package_tarball(work / "small", f"add{n}x{r}")
            t = time.perf_counter()
            repo.ingest(tb)
            times.append(time.perf_counter() - t)
        out[str(n)] = {"files": n, "build_s": build_s, "publish_s": statistics.median(times)}
        log(f"  {n} files: one package in {out[str(n)]['publish_s']:.3f} s")
        if n == sizes[0]:
            keep = state
        elif n:
            shutil.rmtree(state)
    base = out["0"]["publish_s"]
    for n in sizes:
        out[str(n)]["ratio"] = out[str(n)]["publish_s"] / base
    assert keep is not None
    return out, keep


def bench_snapshot(work: Path, state: Path) -> dict[str, Any]:
    repo = Repository(state, NAME)
    dest = work / "s1" / NAME
    master = repo.paths.keys.master_public.read_bytes()
    with serve(state / "srv") as url:
        src = f"{url}/cvmfs/{NAME}"
        first = snapshot(src, dest, master)
        before = object_files(repo)
        repo.ingest(small_package_tarball(work / "small", "snapshotted"))
        new = {k: v for k, v in object_files(repo).items() if k not in before}
        t = time.perf_counter()
        second = snapshot(src, dest, master)
        seconds = time.perf_counter() - t
    new_bytes = sum(new.values())
    return {
        "initial_bytes": first.bytes_fetched,
        "new_objects": len(new),
        "new_object_bytes": new_bytes,
        "objects_fetched": second.objects_fetched,
        "bytes_fetched": second.bytes_fetched,
        "seconds": seconds,
        "ratio": second.bytes_fetched / new_bytes,
    }


def bench_client(work: Path, total_mb: int) -> dict[str, Any]:
    if (
        shutil.which("nginx", path="/usr/sbin:/usr/bin") is None
        or shutil.which("squid", path="/usr/sbin:/usr/bin") is None
    ):
        return {"skipped": "nginx and squid are not installed (run `bash setup.sh`)"}
    from eessi_pipeline.services import stratum1
    from eessi_pipeline.services.plans import Ports
    from eessi_pipeline.services.stack import Stack

    corpus = Corpus(5)
    rng = random.Random(6)
    files: dict[str, bytes] = {}
    while sum(len(v) for v in files.values()) < total_mb * 1024**2:
        i = len(files)
        files[f"software/client/1.0/lib/f{i:04d}"] = corpus.file(
            int(rng.lognormvariate(10.5, 1.3)) + 1, i % 2 == 0
        )
    state = work / "net" / "state"
    repo = Repository(state, NAME)
    repo.init()
    tb = work / "net" / _tarball_name()
    with tarfile.open(tb, "w:gz", compresslevel=1) as tf:
        _layout_dirs(tf, {"software/client", "software/client/1.0", "software/client/1.0/lib"})
        for rel, data in files.items():
            _add(tf, f"{PREFIX}/{rel}", data)
    repo.ingest(tb)
    local = work / "local"
    for rel, data in files.items():
        p = local / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    os.chmod(state, 0o755)
    s0, s1, px = free_ports(3)
    stack = Stack(state, Ports(s0, s1, px))
    stack.up()
    try:
        snapshot(
            f"http://127.0.0.1:{s0}/cvmfs/{NAME}",
            stratum1.Stratum1Paths(state).replica(NAME),
            repo.paths.keys.master_public.read_bytes(),
        )
        paths = [f"/versions/{PREFIX}/{rel}" for rel in files]

        def read(cache: Path) -> None:
            config = ClientConfig(
                NAME,
                (f"http://127.0.0.1:{s1}/cvmfs",),
                cache,
                repo.paths.keys.master_public,
                proxy=f"http://127.0.0.1:{px}",
            )
            reader, _ = open_client(config)
            with reader:
                for p in paths:
                    reader.read_file(p)

        def read_local() -> None:
            for rel in files:
                (local / rel).read_bytes()

        t = time.perf_counter()
        read(work / "cache-cold")  # squid and client both cold
        cold = time.perf_counter() - t
        squid_warm = median_time(lambda: read(Path(tempfile.mkdtemp(dir=work, prefix="cache-"))), 3)
        warm = median_time(lambda: read(work / "cache-cold"), 3)
        disk = median_time(read_local, 5)
    finally:
        stack.down()
    return {
        "files": len(files),
        "bytes": sum(len(v) for v in files.values()),
        "cold_s": cold,
        "squid_warm_s": squid_warm,
        "warm_s": warm,
        "local_disk_s": disk,
        "cold_ratio": cold / disk,
        "squid_warm_ratio": squid_warm / disk,
        "warm_ratio": warm / disk,
    }


def bench_startup(work: Path) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("eessi-pipeline")
    state = work / "init-state"
    out = work / "init-out"
    subprocess.run(
        [str(exe), "--state-dir", str(state), "init", "build", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    repo = work / "init-repo"
    (repo / "versions").mkdir(parents=True)
    with tarfile.open(next(out.glob("*.tar.gz"))) as tf:
        tf.extractall(repo / "versions", filter="data")
    mod = repo / "versions" / VERSION / "software" / "linux" / SUBDIR / "modules" / "all" / "hello"
    mod.mkdir(parents=True)  # an installed candidate for the script to select
    (mod / "1.0.lua").write_text('whatis("hello")\n')
    from eessi_pipeline.software.lmodfiles import write_lmod_files

    software = repo / "versions" / VERSION / "software" / "linux" / SUBDIR
    write_lmod_files(software / ".lmod", str(software))
    # a stand-in compatibility layer: the host's bash and Lmod
    layer = repo / "versions" / VERSION / "compat" / "linux" / SUBDIR.split("/")[0]
    (layer / "bin").mkdir(parents=True)
    (layer / "bin" / "bash").symlink_to("/bin/bash")
    (layer / "usr" / "share").mkdir(parents=True)
    (layer / "usr" / "share" / "Lmod").symlink_to("/usr/share/lmod/lmod")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "EESSI_CVMFS_REPO_OVERRIDE": str(repo)}
    script = f"source {repo}/versions/{VERSION}/init/bash >/dev/null"

    def run(argv: list[str], environ: dict[str, str] | None = None) -> None:
        subprocess.run(argv, check=True, capture_output=True, env=environ)

    run(["bash", "-c", script], env)  # fails loudly here if the init script is broken
    detect_env = {**os.environ, "EESSI_PIPELINE_STATE_DIR": str(state)}
    return {
        "init_bash_s": median_time(lambda: run(["bash", "-c", script], env), 7),
        "bash_baseline_s": median_time(lambda: run(["bash", "-c", "true"], env), 7),
        "detect_s": median_time(lambda: run([str(exe), "detect"], detect_env), 5),
        "python_baseline_s": median_time(lambda: run([sys.executable, "-c", "pass"]), 5),
    }


def bench_tests(timeout: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, workers in (("n_auto", "auto"), ("n_0", "0")):
        log(f"test suite with -n {workers}")
        t = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-n", workers, "-p", "no:cacheprovider"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            rc: int | str = done.returncode
        except subprocess.TimeoutExpired:
            rc = f"timed out after {timeout} s"
        out[label] = {"seconds": time.perf_counter() - t, "returncode": rc}
    out["speedup"] = out["n_0"]["seconds"] / out["n_auto"]["seconds"]
    return out


def bench_ci_stack(work: Path) -> dict[str, Any]:
    """The CI stack end to end: build x86_64_generic from scratch, again (reused), and ingest the tarball."""
    if os.geteuid() != 0:
        return {"skipped": "the build overlay needs root"}
    state = work / "ci-stack"
    env = {**os.environ, "EESSI_PIPELINE_STATE_DIR": str(state)}
    exe = [sys.executable, "-m", "eessi_pipeline.cli"]
    out: dict[str, Any] = {}
    for label in ("cold_build", "warm_build"):
        log(f"CI stack: {label.replace('_', ' ')}")
        t = time.perf_counter()
        done = subprocess.run([*exe, "build", "--target", "x86_64_generic"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=1800)  # fmt: skip
        out[label] = {"seconds": time.perf_counter() - t, "returncode": done.returncode}
        if done.returncode != 0:
            out["error"] = done.stderr[-1000:]
            return out
        tarball = done.stdout.strip().splitlines()[-1]
    subprocess.run([*exe, "repo", "init", "software.eessi.local"], env=env, capture_output=True, timeout=120)
    t = time.perf_counter()
    ingest = [*exe, "repo", "ingest", "--tarball", tarball]
    done = subprocess.run(ingest, env=env, capture_output=True, text=True, timeout=600)
    out["ingest"] = {"seconds": time.perf_counter() - t, "returncode": done.returncode,
                     "tarball_bytes": Path(tarball).stat().st_size}  # fmt: skip
    return out


# -- report --------------------------------------------------------------------------------------------------


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    rows: list[tuple[str, str, str, str]] = []
    ing = res.get("ingest")
    if ing:
        tb = ing["tarball"]
        for k, c in ing["cores"].items():
            rows.append(
                (
                    f"ingest, {k} core{'s' if k != '1' else ''} (taskset)",
                    f"real software, {tb['bytes'] / 1e6:.0f} MB, {tb['files']} files: "
                    f"ingest {c['ingest_s']:.2f} s ({c['ingest_mb_s']:.0f} MB/s) "
                    f"vs zlib-6 + SHA-1 {c['limit_s']:.2f} s on the same cores",
                    f"{c['ratio_limit_over_ingest']:.2f}",
                    "≥ 0.8",
                )
            )
        for k, x in (ing.get("speedup_vs_1_core") or {}).items():
            if k != "1":
                rows.append(
                    (f"ingest speed-up, {k} cores vs 1", "same tarball", f"{x:.2f}", f"≥ {0.85 * int(k):.1f}")
                )
        for kind in ("chunked", "whole"):
            big = ing.get(f"big_member_{kind}")
            if big:
                rows.append(
                    (
                        f"ingest peak RSS, one {big['member_bytes'] / 1024**3:.2f} GiB member ({kind})",
                        f"{big['max_rss_mb']:.0f} MB in {big['seconds']:.1f} s",
                        f"{big['max_rss_mb']:.0f} MB",
                        "< 512 MB",
                    )
                )
    for n, r in (res.get("incremental") or {}).items():
        if n != "0":
            base = res["incremental"]["0"]["publish_s"]
            rows.append(
                (
                    f"incremental publish, {int(n):,} files",
                    f"{r['publish_s']:.3f} s vs {base:.3f} s into an empty repository",
                    f"{r['ratio']:.2f}",
                    "≤ 2",
                )
            )
    snap = res.get("snapshot")
    if snap:
        rows.append(
            (
                "Stratum 1 snapshot after a small change",
                f"{snap['bytes_fetched']:,} bytes fetched vs "
                f"{snap['new_object_bytes']:,} bytes of {snap['new_objects']} new objects",
                f"{snap['ratio']:.2f}",
                "≈ 1",
            )
        )
    cl = res.get("client")
    if cl and "skipped" not in cl:
        what = (
            f"{cl['files']} files, {cl['bytes'] / 1e6:.0f} MB; local disk {cl['local_disk_s'] * 1e3:.0f} ms"
        )
        rows.append(
            (
                "client cold read through squid",
                f"{cl['cold_s']:.2f} s; {what}",
                f"{cl['cold_ratio']:.1f}",
                "(vs disk)",
            )
        )
        rows.append(
            (
                "client read, squid warm, client cache cold",
                f"{cl['squid_warm_s']:.2f} s",
                f"{cl['squid_warm_ratio']:.1f}",
                "(vs disk)",
            )
        )
        rows.append(
            (
                "client warm read from its cache",
                f"{cl['warm_s']:.2f} s",
                f"{cl['warm_ratio']:.1f}",
                "(vs disk)",
            )
        )
    st = res.get("startup")
    if st:
        rows.append(
            (
                "init script start-up",
                f"{st['init_bash_s'] * 1e3:.0f} ms (bash alone {st['bash_baseline_s'] * 1e3:.0f} ms)",
                f"{st['init_bash_s'] / st['bash_baseline_s']:.1f}",
                "(vs bash)",
            )
        )
        rows.append(
            (
                "`eessi-pipeline detect`",
                f"{st['detect_s'] * 1e3:.0f} ms (python -c pass {st['python_baseline_s'] * 1e3:.0f} ms)",
                f"{st['detect_s'] / st['python_baseline_s']:.1f}",
                "(vs python)",
            )
        )
    ts = res.get("tests")
    if ts:
        rows.append(
            (
                "test suite",
                f"-n auto {ts['n_auto']['seconds']:.0f} s (rc {ts['n_auto']['returncode']}), "
                f"-n 0 {ts['n_0']['seconds']:.0f} s (rc {ts['n_0']['returncode']})",
                f"{ts['speedup']:.2f}",
                "speed-up",
            )
        )
    lines = [
        "# Benchmarks",
        "",
        f"Measured {res['when']} with `{res['command']}` (mode: {res['mode']}).",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB memory, "
        f"Linux {m['kernel']} ({m['machine']}), Python {m['python']}.",
        "",
        "| benchmark | measured | ratio | aim |",
        "| --- | --- | --- | --- |",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        "Ratios: ingest = limit seconds / ingest seconds (higher is better); incremental = seconds / seconds "
        "into an empty repository; snapshot = bytes fetched / bytes of new objects; client and start-up = "
        "seconds / the baseline's seconds. Times are medians of repeated runs (the cold read runs once; "
        "ingest and its limit: the best of their runs, each in a fresh process pinned with taskset).",
        "Reproduce: `tox -e bench` (or `.venv/bin/python benchmarks/run.py [--quick|--full]`).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="smoke run: ~20 MB, repositories of 1k and 10k files"
    )
    mode.add_argument("--full", action="store_true", help="also time the test suite (-n auto vs -n 0)")
    ap.add_argument("--ingest-mb", type=int, help="size of the generated tarball (default 200; quick: 20)")
    ap.add_argument("--sizes", help="comma-separated repository sizes in files (default 10000,100000)")
    ap.add_argument("--client-mb", type=int, help="bytes read by the client benchmark (default 50; quick: 5)")
    ap.add_argument(
        "--only", help="comma-separated subset: ingest,incremental,snapshot,client,startup,cistack,tests"
    )
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    ap.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    args = ap.parse_args(argv)
    ingest_mb = args.ingest_mb or (20 if args.quick else 220)
    sizes = [int(s) for s in (args.sizes or ("1000,10000" if args.quick else "10000,100000")).split(",")]
    client_mb = args.client_mb or (5 if args.quick else 50)
    wanted = set((args.only or "ingest,incremental,snapshot,client,startup,cistack,tests").split(","))
    if not args.full:
        wanted.discard("tests")
    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "mode": "quick" if args.quick else "full" if args.full else "default",
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory(prefix="eessi-bench-", dir=args.work) as tmp:
        work = Path(tmp)
        if "ingest" in wanted:
            res["ingest"] = bench_ingest(work, ingest_mb, args.quick)
        if wanted & {"incremental", "snapshot"}:
            res["incremental"], kept = bench_incremental(work, sizes, 3)
            if "snapshot" in wanted:
                res["snapshot"] = bench_snapshot(work, kept)
                res["snapshot"]["files_in_repository"] = sizes[0]
        if "client" in wanted:
            log("client reads through squid")
            res["client"] = bench_client(work, client_mb)
        if "startup" in wanted:
            res["startup"] = bench_startup(work)
        if "cistack" in wanted:
            res["ci_stack"] = bench_ci_stack(work)
        if "tests" in wanted:
            res["tests"] = bench_tests(1800)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(res)
    ci = res.get("ci_stack")
    if ci and "cold_build" in ci:
        text += (
            "\n## CI stack end to end (x86_64_generic: zlib, STREAM, SciPy-bundle)\n\n"
            "| step | seconds |\n| --- | --- |\n"
            + "".join(
                f"| {k.replace('_', ' ')} | {v['seconds']:.1f} |\n"
                for k, v in ci.items()
                if isinstance(v, dict)
            )
        )
    args.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
