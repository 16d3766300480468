"""The measuring loop: runs alternate between systems, cold runs remount after a cache drop, warm
and write runs are guarded against other processes dropping caches
(docs/peers.rst "Noise and same-run ratios", "Workloads")."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from ._image import Image, extract_layer
from ._report import Cell, Report, Run
from ._systems import LAYERFS, LayerfsImage, Mounted, System
from ._util import (
    BenchError,
    Janitor,
    debug,
    drop_caches,
    drop_counters,
    log,
    mounts_under,
    pids_with_arg,
    stop_pid,
    timer,
    unmount,
)
from ._workloads import Ctx, Workload, prepare_for

MAX_REPEATS = 3


def sweep_stale(run_base: Path) -> None:
    """Undo what an earlier, killed invocation left under ``<cache>/run/`` (its PID is gone)."""
    if not run_base.is_dir():
        return
    for d in run_base.iterdir():
        if d.name.isdigit() and os.path.exists(f"/proc/{d.name}"):
            continue
        for mp in reversed(mounts_under(d)):
            log(f"stale mount from an earlier run: {mp}")
            for pid in pids_with_arg(mp):
                stop_pid(pid)
            unmount(mp)
        if not mounts_under(d):
            shutil.rmtree(d, ignore_errors=True)


def _rotate(items: list[System], i: int) -> list[System]:
    k = i % len(items) if items else 0
    return items[k:] + items[:k]


class Runner:
    def __init__(self, image: Image, systems: list[System], report: Report, janitor: Janitor,
                 ctx: Ctx, runs: int, mount_runs: int) -> None:
        self.image, self.systems, self.report, self.janitor = image, systems, report, janitor
        self.ctx, self.runs, self.mount_runs = ctx, runs, mount_runs
        self.ro: dict[str, Mounted] = {}
        self.repeated = 0
        self.disturbed = 0
        self.rewarmed = 0

    # -- mounts -------------------------------------------------------------------------------------
    def mount_all(self) -> None:
        for s in self.systems:
            try:
                self.ro[s.key] = s.mount()
            except BenchError as err:
                log(f"{s.key}: cannot mount: {err}")
                self.report.unavailable[s.key] = f"mount failed: {err}"
        self.systems = [s for s in self.systems if s.key in self.ro]

    def unmount_all(self) -> None:
        for key, m in list(self.ro.items()):
            m.system.unmount(m)
            del self.ro[key]

    def remount(self, s: System, *, cold: bool) -> Mounted:
        old = self.ro.pop(s.key, None)
        if old is not None:
            s.unmount(old)
        if cold:
            drop_caches()
        m = s.mount()
        self.ro[s.key] = m
        return m

    # -- one measured run ---------------------------------------------------------------------------
    def _measure(self, m: Mounted, fn: Callable[[Path, Ctx], dict[str, int]]) -> Run:
        before = m.system.requests(m)
        with timer() as t:
            result = fn(m.root, self.ctx)
        after = m.system.requests(m)
        reqs = None
        if before is not None and after is not None:
            reqs = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        return Run(t[0], result, reqs)

    def _guarded(self, attempt: Callable[[], Run], rewarm: Callable[[], None] | None) -> Run:
        """Repeat a run while someone else dropped caches during it (up to MAX_REPEATS times)."""
        repeated = 0
        while True:
            c0 = drop_counters()
            run = attempt()
            if drop_counters() == c0:
                break
            if repeated == MAX_REPEATS:
                run.disturbed = True
                self.disturbed += 1
                break
            repeated += 1
            self.repeated += 1
            log("a cache drop by another process disturbed the run: repeating it")
            if rewarm is not None:
                rewarm()
        run.repeated = repeated
        return run

    def _record(self, w: Workload, mode: str, s: System, fn: Callable[[], Run]) -> None:
        row = self.report.row(w.key, mode, self._title(w), w.rate, w.extra)
        cell = row.cells.setdefault(s.key, Cell())
        if w.kind == "write" and s.no_writable:
            cell.na = s.no_writable
        if cell.error or cell.na:
            return
        try:
            run = fn()
        except (BenchError, OSError, subprocess.SubprocessError) as err:
            if w.kind == "write" and s.no_writable:
                cell.na = s.no_writable
                return
            cell.error = str(err)[:300]
            log(f"{w.key} ({mode}) on {s.key}: error: {cell.error}")
            return
        cell.runs.append(run)
        debug(f"{w.key} ({mode}) {s.key}: {run.t:.3f} s")

    def _title(self, w: Workload) -> str:
        return w.title.replace("10k", f"{self.ctx.creates // 1000}k")

    # -- workloads ----------------------------------------------------------------------------------
    def run_workload(self, w: Workload, modes: tuple[str, ...]) -> None:
        log(f"workload {w.key} ({', '.join(modes)})")
        if w.kind == "mount":
            self._mount_workload(w)
        elif w.kind == "read":
            for mode in modes:
                self._read_workload(w, mode)
        else:
            for mode in modes:
                self._write_workload(w, mode)

    def _mount_workload(self, w: Workload) -> None:
        systems = [s for s in self.systems if s.key != "native"]
        for i in range(self.mount_runs):
            for s in _rotate(systems, i):
                def attempt(s: System = s) -> Run:
                    old = self.ro.pop(s.key, None)
                    if old is not None:
                        s.unmount(old)
                    with timer() as t:
                        m = s.mount()
                        os.stat(m.root)
                    self.ro[s.key] = m
                    return Run(t[0])
                self._record(w, "warm", s, lambda: self._guarded(attempt, None))

    def _read_workload(self, w: Workload, mode: str) -> None:
        if mode == "cold":
            for i in range(self.runs):
                for s in _rotate(self.systems, i):
                    def attempt(s: System = s) -> Run:
                        m = self.remount(s, cold=True) if s.key != "native" else self._native_cold()
                        return self._measure(m, w.timed)
                    self._record(w, mode, s, attempt)
            return
        warm_since: dict[str, tuple[int, int]] = {}  # drop counters when each system was last warm
        for s in self.systems:  # the unmeasured warm-up run
            self._record(w, mode, s, lambda s=s: self._warmup(w, s))
            warm_since[s.key] = drop_counters()
            row = self.report.row(w.key, mode, self._title(w), w.rate, w.extra)
            row.cells[s.key].runs.clear()
        for i in range(self.runs):
            for s in _rotate(self.systems, i):
                m = self.ro[s.key]

                def rewarm(m: Mounted = m) -> None:
                    w.timed(m.root, self.ctx)

                def attempt(m: Mounted = m, s: System = s) -> Run:
                    if drop_counters() != warm_since[s.key]:  # dropped since it was warm: warm it again
                        self.rewarmed += 1
                        rewarm()
                    run = self._guarded(lambda: self._measure(m, w.timed), rewarm)
                    warm_since[s.key] = drop_counters()
                    return run
                self._record(w, mode, s, attempt)

    def _native_cold(self) -> Mounted:
        drop_caches()
        return self.ro["native"]

    def _warmup(self, w: Workload, s: System) -> Run:
        m = self.ro[s.key]
        w.timed(m.root, self.ctx)
        return Run(0.0)

    def _write_workload(self, w: Workload, mode: str) -> None:
        for i in range(self.runs):
            for s in _rotate(self.systems, i):
                def attempt(s: System = s) -> Run:
                    if mode == "cold":
                        drop_caches()
                    m = s.mount(writable=True)
                    try:
                        native = s.key == "native"
                        prep = prepare_for(w, mode)
                        if prep is not None:
                            prep(m.root, self.ctx, native)
                        fn = w.timed_native if native and w.timed_native else w.timed
                        return self._measure(m, fn)
                    finally:
                        s.unmount(m)
                self._record(w, mode, s, lambda attempt=attempt: self._guarded(attempt, None)
                             if mode == "warm" else attempt())

    # -- pull and unpack ----------------------------------------------------------------------------
    def pull(self, registry: str, runs: int, work: Path, with_layerfs: bool) -> None:
        ref = f"{registry}/{self.image.repo}:{self.image.tag}"
        log(f"workload pull ({runs} run(s)): skopeo copy + umoci unpack / per-layer extract"
            + (", layerfs pull" if with_layerfs else ""))
        steps = self.report.pull
        for i in range(runs):
            order = ["peers", "layerfs"] if i % 2 == 0 else ["layerfs", "peers"]
            for who in order:
                d = work / f"pull-{who}-{i}"
                d.mkdir(parents=True)
                try:
                    if who == "peers":
                        self._pull_peers(ref, d, steps)
                    elif with_layerfs:
                        drop_caches()
                        with timer() as t:
                            r = subprocess.run([str(LAYERFS), "--root", str(d / "store"), "pull", "-q", ref],
                                               capture_output=True, text=True, timeout=3600)
                        if r.returncode != 0:
                            self.report.pull_errors["layerfs pull"] = (r.stderr.strip().splitlines() or ["?"])[-1][:200]
                        else:
                            steps.setdefault("layerfs pull (pull + unpack)", []).append(t[0])
                except BenchError as err:
                    self.report.pull_errors[f"{who} run {i + 1}"] = str(err)[:200]
                finally:
                    shutil.rmtree(d, ignore_errors=True)

    def _pull_peers(self, ref: str, d: Path, steps: dict[str, list[float]]) -> None:
        from ._util import run as sh
        drop_caches()
        with timer() as t_copy:
            sh(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{d / 'oci'}:bench"],
               timeout=3600)
        drop_caches()
        with timer() as t_unpack:
            sh(["umoci", "unpack", "--image", f"{d / 'oci'}:bench", d / "bundle"], timeout=3600)
        shutil.rmtree(d / "bundle")
        drop_caches()
        from ._image import _oci_diff_ids
        _, blobs = _oci_diff_ids(d / "oci", "bench")
        with timer() as t_layers:
            for n, (digest, _size) in enumerate(blobs):
                algo, hexd = digest.split(":")
                extract_layer(d / "oci" / "blobs" / algo / hexd, d / "layers" / str(n))
        for k, v in (("skopeo copy", t_copy[0]), ("umoci unpack (flattened rootfs)", t_unpack[0]),
                     ("per-layer extract (GNU tar + whiteout conversion)", t_layers[0]),
                     ("skopeo copy + umoci unpack", t_copy[0] + t_unpack[0]),
                     ("skopeo copy + per-layer extract", t_copy[0] + t_layers[0])):
            steps.setdefault(k, []).append(v)


def verify_trees(systems: list[System], ro: dict[str, Mounted], report: Report) -> None:
    """Compare every view with the kernel overlay's (the semantics to match), entry by entry, as
    docs/peers.rst "The systems" says; without the kernel overlay, with the plain dir."""
    ref = "overlay" if "overlay" in ro else "native" if "native" in ro else None
    if ref is None:
        return
    base = _snapshot(ro[ref].root)
    report.meta["verify_ref"] = ref
    for s in systems:
        if s.key == ref or s.key not in ro:
            continue
        try:
            other = _snapshot(ro[s.key].root)
        except OSError as err:
            report.verify[s.key] = f"could not walk the mount: {err}"
            continue
        missing = sorted(set(base) - set(other))
        extra = sorted(set(other) - set(base))
        differ = sorted(p for p in set(base) & set(other) if base[p] != other[p])
        if not (missing or extra or differ):
            report.verify[s.key] = f"identical ({len(base):,} entries)"
        else:
            ex = (missing[:2] and [f"missing {p}" for p in missing[:2]]) + [f"extra {p}" for p in extra[:2]] + \
                 [f"{p}: {base[p]} vs {other[p]}" for p in differ[:2]]
            report.verify[s.key] = (f"**differs**: {len(missing)} missing, {len(extra)} extra, {len(differ)} "
                                    f"different (e.g. {'; '.join(ex)})")
            log(f"tree check: {s.key}: {report.verify[s.key]}")


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """type, mode, owner, size (non-dirs), link target, xattrs (not overlay's), mtime (s)."""
    out: dict[str, tuple[object, ...]] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for e in it:
                p = os.path.join(rel, e.name)
                st = os.lstat(e.path)
                isdir = e.is_dir(follow_symlinks=False)
                link = os.readlink(e.path) if e.is_symlink() else ""
                try:
                    xs = tuple(sorted((x, os.getxattr(e.path, x, follow_symlinks=False))
                                      for x in os.listxattr(e.path, follow_symlinks=False)
                                      if not x.startswith("trusted.overlay.")))
                except OSError:
                    xs = ()
                out[p] = (st.st_mode, st.st_uid, st.st_gid, 0 if isdir else st.st_size, link, xs,
                          int(st.st_mtime))
                if isdir:
                    stack.append(p)
    return out


def layerfs_image(systems: list[System]) -> LayerfsImage | None:
    return next((s for s in systems if isinstance(s, LayerfsImage)), None)



