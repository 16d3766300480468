"""Results: the table (terminal and Markdown), every run (JSON) and the chart of ratios (PNG).

A cell is the median of the runs, its ratio to the plain directory in the same invocation, and the
spread (min–max).  For layerfs, the FUSE requests the daemon served during the median run are shown
too, by opcode in the Markdown file, so that a figure can be explained.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._util import fmt_size, fmt_time


@dataclass
class Run:
    t: float
    result: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] | None = None
    repeated: int = 0          # disturbed runs thrown away before this one
    disturbed: bool = False    # still disturbed after the last repeat


@dataclass
class Cell:
    runs: list[Run] = field(default_factory=list)
    error: str | None = None
    na: str | None = None      # why the system cannot run this workload (not an error)

    @property
    def median(self) -> float | None:
        return statistics.median(r.t for r in self.runs) if self.runs else None

    def median_run(self) -> Run | None:
        if not self.runs:
            return None
        ordered = sorted(self.runs, key=lambda r: r.t)
        return ordered[(len(ordered) - 1) // 2]


@dataclass
class Row:
    key: str        # workload key
    mode: str       # cold | warm
    title: str
    rate: str | None = None
    extra: bool = False
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.title} ({self.mode})"


@dataclass
class Report:
    systems: list[str]                       # keys, in column order
    labels: dict[str, str]
    unavailable: dict[str, str]              # key -> why
    rows: list[Row] = field(default_factory=list)
    pull: dict[str, list[float]] = field(default_factory=dict)
    pull_errors: dict[str, str] = field(default_factory=dict)
    meta: dict[str, object] = field(default_factory=dict)
    verify: dict[str, str] = field(default_factory=dict)

    def row(self, key: str, mode: str, title: str, rate: str | None, extra: bool) -> Row:
        for r in self.rows:
            if r.key == key and r.mode == mode:
                return r
        r = Row(key, mode, title, rate, extra)
        self.rows.append(r)
        return r


def ratio(row: Row, system: str, base: str = "native") -> float | None:
    a, b = row.cells.get(system), row.cells.get(base)
    if a is None or b is None or a.median is None or not b.median:
        return None
    return a.median / b.median


def _rate(row: Row, cell: Cell) -> str:
    run = cell.median_run()
    if run is None or row.rate is None or row.rate not in run.result or not run.t:
        return ""
    v = run.result[row.rate] / run.t
    return f", {v / 1e6:,.0f} MB/s" if row.rate == "bytes" else f", {v:,.0f}/s"


#: What the C engine counts beside its requests (copy-ups, whiteouts made, directories a lazily
#: merged mount merged): shown with the opcodes, never added to the requests.
EVENTS = frozenset({"copyup", "metacopy", "whiteout", "dir_merge"})


def _total_requests(run: Run | None) -> int | None:
    if run is None or run.requests is None:
        return None
    return sum(v for k, v in run.requests.items() if k not in EVENTS)


def cell_text(report: Report, row: Row, system: str, *, spread: bool = True) -> str:
    if system in report.unavailable:
        return "n/a"
    cell = row.cells.get(system)
    if cell is None:
        return "–"
    if cell.na:
        return "n/a"
    if cell.error:
        return "error"
    med = cell.median
    if med is None:
        return "–"
    text = fmt_time(med) + _rate(row, cell)
    r = ratio(row, system) if system != "native" else None
    if r is not None:
        text += f" ({r:.2f}×)"
    if spread and len(cell.runs) > 1:
        lo, hi = min(x.t for x in cell.runs), max(x.t for x in cell.runs)
        text += f" [{fmt_time(lo)}–{fmt_time(hi)}]"
    return text


def _layerfs_keys(report: Report) -> list[str]:
    return [s for s in report.systems if s.startswith("layerfs") and s not in report.unavailable]


def table_lines(report: Report, *, markdown: bool) -> list[str]:
    systems = report.systems
    head = ["workload"] + [report.labels[s] for s in systems]
    lf = _layerfs_keys(report)
    if lf:
        head.append("layerfs requests")
    goal = "fuse-overlayfs" in systems and "layerfs" in systems and "layerfs" not in report.unavailable
    if goal:
        head.append("layerfs ÷ fuse-overlayfs")
    body = []
    for row in report.rows:
        line = [row.label + (" *" if row.extra else "")]
        line += [cell_text(report, row, s, spread=markdown) for s in systems]
        if lf:
            reqs = [_total_requests(row.cells[s].median_run()) if s in row.cells else None for s in lf]
            line.append(" / ".join(f"{n:,}" if n is not None else "–" for n in reqs))
        if goal:
            a, b = row.cells.get("layerfs"), row.cells.get("fuse-overlayfs")
            if a and b and a.median is not None and b.median:
                q = a.median / b.median
                line.append(f"{q:.2f}× {'met' if q <= 1.0 else 'behind'}")
            else:
                line.append("–")
        body.append(line)
    if markdown:
        out = ["| " + " | ".join(head) + " |",
               "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in body]
        return out
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*line) for line in body]
    return out


def pull_lines(report: Report, *, markdown: bool) -> list[str]:
    if not report.pull and not report.pull_errors:
        return []
    compressed = float(report.meta.get("compressed", 0) or 0)
    head = ["step", "median", "min", "max", "MB/s (compressed)", "runs"]
    body = []
    for step, times in report.pull.items():
        if not times:
            continue
        med = statistics.median(times)
        body.append([step, fmt_time(med), fmt_time(min(times)), fmt_time(max(times)),
                     f"{compressed / med / 1e6:,.0f}" if med else "–", " / ".join(f"{t:.2f}" for t in times)])
    for step, err in report.pull_errors.items():
        body.append([step, "n/a", "", "", "", err])
    lf = report.pull.get("layerfs pull (pull + unpack)")
    for base in ("skopeo copy + umoci unpack", "skopeo copy + per-layer extract"):
        if lf and report.pull.get(base):
            q = statistics.median(lf) / statistics.median(report.pull[base])
            body.append([f"layerfs pull ÷ ({base})", f"{q:.2f}×", "", "", "", ""])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|---|"]
        out += ["| " + " | ".join(line) + " |" for line in body]
        return out
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i in (0, 5) else '>'}{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*head), "  ".join("-" * w for w in widths)] + [fmt.format(*line) for line in body]


def print_terminal(report: Report) -> None:
    print()
    print(f"layerfs bench: image {report.meta.get('image')}, {report.meta.get('runs')} run(s) per cell, "
          f"load average {report.meta.get('load_start')} → {report.meta.get('load_end')}")
    for s, why in report.unavailable.items():
        print(f"  {report.labels[s]}: NOT AVAILABLE: {why}")
    print()
    for line in table_lines(report, markdown=False):
        print(line)
    pl = pull_lines(report, markdown=False)
    if pl:
        print()
        for line in pl:
            print(line)
    print()


def write_markdown(report: Report, path: Path) -> None:
    m = report.meta
    out = [f"# layerfs bench: {m.get('image')}", ""]
    out.append(f"- Started {m.get('started')}; {m.get('elapsed', 0):.0f} s in all; kernel {m.get('kernel')}; "
               f"{m.get('cpus')} CPUs. Load average {m.get('load_start')} at the start, "
               f"{m.get('load_end')} at the end.")
    out.append(f"- Image: {m.get('entries'):,} entries, {fmt_size(float(m.get('bytes', 0)))} unpacked, "  # type: ignore[arg-type]
               f"{fmt_size(float(m.get('compressed', 0)))} compressed, {m.get('layers')} layers; "  # type: ignore[arg-type]
               f"{m.get('cat_files')} files in the cat list.")
    out.append(f"- Runs per cell: {m.get('runs')} (mount: {m.get('mount_runs')}); cold = unmount, drop caches, "
               "mount; warm = after one unmeasured run. Cells: median (ratio to the plain dir) [min–max].")
    out.append(f"- Noise guard (/proc/vmstat drop_pagecache, drop_slab): warm and write runs during which "
               f"another process dropped caches were repeated {m.get('repeated', 0)} times; "
               f"{m.get('disturbed', 0)} were still disturbed after 3 repeats (marked in the runs below); "
               f"{m.get('rewarmed', 0)} warm runs were re-warmed first because caches had been dropped since "
               "the last warm run.")
    out.append("- Only same-run ratios count (docs/peers.rst); `*` marks workloads the baseline lacks.")
    for label, cmd in m.get("commands", {}).items():  # type: ignore[attr-defined]
        out.append(f"- {label}: `{cmd}`")
    out.append(f"- Layer dirs: {m.get('lowerdir')}")
    for s, why in report.unavailable.items():
        out.append(f"- **{report.labels[s]}: not available**: {why}")
    for s, v in report.verify.items():
        ref = str(m.get("verify_ref", "native"))
        out.append(f"- Tree check (type, mode, owner, size, link, xattrs, mtime), {report.labels.get(s, s)} "
                   f"vs {report.labels.get(ref, ref)}: {v}")
    for note in m.get("notes", []):  # type: ignore[attr-defined]
        out.append(f"- {note}")
    out += ["", "## Results", ""] + table_lines(report, markdown=True)
    pl = pull_lines(report, markdown=True)
    if pl:
        out += ["", "## Pull and unpack (page cache dropped before each step)", ""] + pl
    lf = _layerfs_keys(report)
    if lf:
        out += ["", "## layerfs: FUSE requests per run (median run), by opcode", ""]
        for row in report.rows:
            for s in lf:
                run = row.cells[s].median_run() if s in row.cells else None
                if run is None or run.requests is None:
                    continue
                ops = ", ".join(f"{k} {v:,}" for k, v in sorted(run.requests.items(), key=lambda kv: -kv[1]) if v)
                out.append(f"- {row.label}, {report.labels[s]}: {_total_requests(run) or 0:,} ({ops or 'none'})")
        if not any(r.requests is not None for row in report.rows for s in lf for r in row.cells.get(s, Cell()).runs):
            out.append("- not reported: this layerfs gives no request statistics")
    out += ["", "## Every run (seconds)", ""]
    for row in report.rows:
        parts = []
        for s in report.systems:
            c = row.cells.get(s)
            if c is None:
                continue
            if c.na:
                parts.append(f"{report.labels[s]}: n/a: {c.na}")
            elif c.error:
                parts.append(f"{report.labels[s]}: error: {c.error}")
            else:
                parts.append(f"{report.labels[s]} " + " / ".join(
                    f"{r.t:.3f}" + (f" (repeated {r.repeated}×)" if r.repeated else "")
                    + (" (disturbed)" if r.disturbed else "")
                    for r in c.runs))
        out.append(f"- {row.label}: " + "; ".join(parts))
    path.write_text("\n".join(out) + "\n")


def write_json(report: Report, path: Path) -> None:
    path.write_text(json.dumps(asdict(report), indent=1, default=str) + "\n")


def draw_chart(report: Report, path: Path) -> str | None:
    """Horizontal bars: each system's ratio to the plain dir, per workload (log scale)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is missing (.venv/bin/pip install matplotlib, the 'bench' extra): no chart"
    systems = [s for s in report.systems if s != "native" and s not in report.unavailable]
    rows = [r for r in report.rows if any(ratio(r, s) for s in systems)]
    if not rows or not systems:
        return "nothing to draw"
    height = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) * max(1, len(systems) / 2) + 1.5))
    for i, s in enumerate(systems):
        ys = [j + i * height for j in range(len(rows))]
        vals = [ratio(r, s) or 0 for r in rows]
        ax.barh(ys, vals, height=height, label=report.labels[s])
        for y, v, r in zip(ys, vals, rows, strict=True):
            c = r.cells.get(s)
            text = f" {v:.2f}×" if v else " n/a" if c is None or c.na or c.error else ""
            ax.text(v if v else 1.0, y, text, va="center", fontsize=6)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(rows))])
    ax.set_yticklabels([r.label for r in rows])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("median time ÷ plain dir (same run; lower is better)")
    ax.set_title(f"layerfs bench: {report.meta.get('image')}, load {report.meta.get('load_start')}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(systems), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
