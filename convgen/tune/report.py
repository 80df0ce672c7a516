"""What `convgen tune --report` and `convgen records list` print, and the search curve as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from .records import Record, Winner
from .tuner import LayerResult


def knobs_text(config: str) -> str:
    """A point of the space in a line: 'direct: axis channels, lanes 16, vectors 2, tile 14, ...'."""
    knobs = json.loads(config)
    recipe = knobs.pop("recipe", "?")
    return f"{recipe}: " + ", ".join(f"{k} {v if v != '' else '-'}" for k, v in knobs.items()) if knobs else recipe


def layer_report(result: LayerResult) -> str:
    """The layer's default and tuned GFLOP/s (timed in turn, in one worker) and the winning schedule."""
    if result.winner is None:
        return f"{result.spec.name}: no candidate matched the reference; nothing recorded as the winner"
    default = f"{result.default_gflops:.1f}" if result.default_gflops else "-"
    ratio = f" ({result.tuned_gflops / result.default_gflops:.2f}x)" if result.default_gflops else ""
    lines = [f"{result.spec.name}: default {default} GFLOP/s, tuned {result.tuned_gflops:.1f} GFLOP/s{ratio}; "
             f"{result.measured} candidates ({result.failed} refused or failed, {result.resumed} from earlier runs), "
             f"{result.threads} thread{'s' * (result.threads != 1)}",
             f"  winner: record {result.winner.id}, {knobs_text(result.winner.config)}",
             "  schedule:"]
    lines += [f"    {line}" for line in result.winner.schedule.splitlines()] or ["    (none)"]
    return "\n".join(lines)


def records_table(records: list[Record], winners: list[Winner]) -> str:
    chosen = {w.record.id for w in winners}
    rows = [f"{'id':>5} {'layer':<28} {'threads':>7} {'status':<8} {'GFLOP/s':>8} {'search':<10} {'when':<20} schedule"]
    for r in records:
        gflops = f"{r.gflops:.1f}" if r.gflops else "-"
        mark = "*" if r.id in chosen else " "
        what = knobs_text(r.config) if r.status in ("ok", "refused") else f"{knobs_text(r.config)} ({r.detail[:60]})"
        rows.append(f"{r.id:>4}{mark} {r.spec_name[:28]:<28} {r.threads:>7} {r.status:<8} {gflops:>8} "
                    f"{r.search:<10} {r.created[:19]:<20} {what}")
    return "\n".join(rows) + ("\n(* the winner of its layer, target, threads and convgen version)" if chosen else "")


def plot_curves(results: list[LayerResult], path: Path) -> Path:
    """The search curves: best GFLOP/s so far (over the default's, as the
    search measured it first) against candidates measured and against
    seconds, a line per layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (by_count, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for result in results:
        base = next((best for _, _, best in result.curve if best), None)   # the default: measured first
        curve = [(n, s, best / base) for n, s, best in result.curve if best and base]
        if not curve:
            continue
        by_count.step([c[0] for c in curve], [c[2] for c in curve], where="post", label=result.spec.name)
        by_time.step([c[1] for c in curve], [c[2] for c in curve], where="post", label=result.spec.name)
    by_count.set_xlabel("candidates measured")
    by_time.set_xlabel("seconds of search")
    by_count.set_ylabel("best GFLOP/s so far / default's")
    for axes in (by_count, by_time):
        axes.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        axes.grid(alpha=0.3)
    by_time.legend(fontsize="small", loc="lower right")
    figure.suptitle(f"convgen tune: search curves ({results[0].search if results else ''})")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
