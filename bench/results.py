"""Medians, ratios, plain-text tables, and the JSON + PNG files under ``bench/results/``."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(ours: float | None, peer: float | None) -> float | None:
    return ours / peer if ours is not None and peer else None


def paired_ratio(ours: Sequence[float | None], peer: Sequence[float | None]) -> float | None:
    """Median of ``ours[i] / peer[i]``: each ratio pairs runs of the same repeat.

    Runs of one repeat are seconds apart, so slow drift of the machine (a VM's
    neighbours, clock speed) cancels out of each ratio.
    """
    return median(ratio(mine, theirs) for mine, theirs in zip(ours, peer, strict=True))


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A plain-text table; ``align`` has one ``l``/``r`` per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(cells, widths, align, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def machine_info() -> dict:
    model = ""
    try:
        for raw in Path("/proc/cpuinfo").read_text().splitlines():
            if raw.startswith("model name"):
                model = raw.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for module in ("uvicorn", "litestar", "uvloop", "httptools", "asyncpg"):
        try:
            from importlib.metadata import version

            versions[module] = version(module)
        except Exception:  # not installed: just not reported
            pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
    }


def output_paths(benchmark: str) -> tuple[Path, Path]:
    """``bench/results/<benchmark>-<timestamp>.json`` and ``.png``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"
    return RESULTS_DIR / f"{stem}.json", RESULTS_DIR / f"{stem}.png"


def save_json(path: Path, payload: dict) -> Path:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def pyplot():
    """matplotlib's pyplot on the Agg backend (install the ``bench`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_panel(
    ax,  # a matplotlib Axes
    labels: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    title: str,
    ylabel: str,
    points: dict[str, Sequence[Sequence[float]]] | None = None,
    notes: dict[str, Sequence[str | None]] | None = None,
    value_format: str = "{:,.0f}",
    log: bool = False,
) -> None:
    """Grouped bars (one group per label, one bar per series) with value labels.

    ``points`` (same keys as ``series``) overlays each repeat as a dot, so the
    spread behind a median is visible; ``notes`` adds a second line to a
    bar's label (e.g. its ratio to the peer).
    """
    count = len(series)
    width = 0.8 / count
    for index, (name, values) in enumerate(series.items()):
        xs = [i + (index - (count - 1) / 2) * width for i in range(len(labels))]
        heights = [v if v is not None else 0 for v in values]
        bars = ax.bar(xs, heights, width * 0.92, label=name if count > 1 else None)
        dots = points.get(name) if points else None
        extra = notes.get(name) if notes else None
        for i, (bar, value) in enumerate(zip(bars, values, strict=True)):
            if value is None:
                continue
            text = value_format.format(value)
            if extra and extra[i]:
                text += f"\n{extra[i]}"
            top = max([bar.get_height(), *(dots[i] if dots else [])])
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, top),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        if dots:
            for x, repeat_values in zip(xs, dots, strict=True):
                ax.scatter([x] * len(repeat_values), repeat_values, s=10, color="black", zorder=3)
    ax.set_xticks(range(len(labels)), labels, fontsize=9)
    ax.set_title(title, fontsize=11)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
        ax.margins(y=0.25)
    else:
        ax.margins(y=0.18)
    ax.grid(axis="y", alpha=0.3)
    if count > 1:
        ax.legend(fontsize=8, loc="upper left")
