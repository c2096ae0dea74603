"""What `sweep` and `extract --keep auto` print: the sweep table and the automatic-K table (rich)."""

from __future__ import annotations

from rich import box
from rich.table import Table

from emo_slice.cli.display import _fmt, human
from emo_slice.eval.metrics import HIGHER_IS_BETTER
from emo_slice.workflows.sweep import headline_metrics

# below this many columns the table leaves out tokens/s (in the JSON still): every figure stays whole in an
# 80-column terminal or a log file (rich's width without a terminal), instead of being cut to "stand…"
WIDE = 110


def _cell(metric: str, v, kept) -> str:
    return _fmt(metric, v) + (f"\n({kept:.1%})" if kept is not None else "")


def _control_cell(stats: dict | None) -> str:
    """The random draws' share kept: mean, and under it ± one standard deviation (percentage points)."""
    if not stats or stats.get("mean") is None:
        return "-"
    sd = stats.get("sd")
    return f"{stats['mean']:.1%}" + (f"\n±{sd * 100:.1f}" if sd is not None else "")


def _column(t: Table, header: str) -> None:
    t.add_column(header, justify="right", overflow="fold")


def _sweep_columns(t: Table, sweeps: list[dict], shown: dict, n_ctrl: int, wide: bool) -> None:
    _column(t, "K")
    _column(t, "bytes")
    for sw in sweeps:
        for task, ms in shown.items():
            for m in ms:
                arrow = "" if HIGHER_IS_BETTER.get(m, True) else " ↓"
                where = "" if len(shown) == 1 else f"{task} "
                name = m.replace("_per_", "/")
                _column(t, f"{sw['label']}\n{where}{name}{arrow}")
                if n_ctrl:
                    _column(t, f"{sw['label']}\nrandom")
        if wide:
            _column(t, f"{sw['label']}\ntok/s")


def _tok_s(v) -> str:
    return f"{v:,.0f}" if v else "-"


def _stats_at(sw: dict, k: int) -> dict:
    return next((c for c in sw.get("control_stats") or [] if c["keep"] == k), {})


def sweep_table(data: dict, metrics: list[str] | None = None, width: int = 80) -> Table:
    """One row per K (and the full model): bytes with their share of the full model's, then for every model each
    shown metric with the share of the full score kept, and the share the random controls keep (mean, ± one
    standard deviation); tokens/s too when the terminal is at least WIDE columns wide."""
    sweeps = data["sweeps"]
    first = sweeps[0]
    shown = {k: v for k, v in headline_metrics(first["full"]["results"], metrics or None).items() if v}
    n_ctrl = first["controls"]["n"]
    wide = width >= WIDE
    only = f" on {next(iter(shown))}" if len(shown) == 1 else ""
    draws = "one draw: its spread is unknown" if n_ctrl == 1 else f"mean, ± sd of {n_ctrl} draws"
    t = Table(
        box=box.SIMPLE_HEAD,
        title=f"Sweep{only}: experts chosen by {first['method']}, against the full model on the same items",
        caption="(x%): share of the full model's score kept; ↓ lower is better"
        + (f"; random: share kept by random experts ({draws})" if n_ctrl else ""),
    )
    _sweep_columns(t, sweeps, shown, n_ctrl, wide)
    for k in first["keeps"]:
        rows = [[r for r in sw["rows"] if r["keep"] == k] for sw in sweeps]
        mine0 = next(r for r in rows[0] if r["kind"] == "profile")
        cells = [f"{k}\n({k / first['num_experts']:.0%})", f"{human(mine0['bytes'])}\n({mine0['share_of_bytes']:.1%})"]
        for sw, sw_rows in zip(sweeps, rows):
            mine = next(r for r in sw_rows if r["kind"] == "profile")
            stats = _stats_at(sw, k)
            for task, ms in shown.items():
                for m in ms:
                    cells.append(_cell(m, mine["results"][task].get(m), mine["kept"][task].get(m)))
                    if n_ctrl:
                        cells.append(_control_cell(stats.get("kept", {}).get(task, {}).get(m)))
            if wide:
                cells.append(_tok_s(mine["tokens_per_s"]))
        t.add_row(*cells, end_section=True)
    cells = [f"{first['num_experts']}\n(all)", human(first["full"]["bytes"])]
    for sw in sweeps:
        for task, ms in shown.items():
            for m in ms:
                cells += [_fmt(m, sw["full"]["results"][task].get(m))] + (["-"] if n_ctrl else [])
        if wide:
            cells.append(_tok_s(sw["full"]["tokens_per_s"]))
    t.add_row(*cells)
    return t


def auto_keep_table(record: dict) -> Table:
    """What `extract --keep auto` tried: each K with what it kept, and the K chosen."""
    by_mass = record["rule"] == "target-mass"
    goal = f"{record['target_mass']:.1%} of the routing mass" if by_mass else f"{record['target']:.1%} of the score"
    t = Table(
        title=f"--keep auto: smallest K keeping {goal} ({record['search']}); chose K = {record['chosen']}",
        caption=None if by_mass else record["assumption"],
    )
    t.add_column("K", justify="right")
    t.add_column("routing mass held (worst layer)" if by_mass else "share of the full score kept", justify="right")
    if not by_mass:
        t.add_column("of the full bytes", justify="right")
    t.add_column("meets the target", justify="right")
    for r in record["tried"]:
        if by_mass:
            t.add_row(
                str(r["keep"]),
                f"{r['mass_held_min']:.1%} (layer {r['worst_layer']})",
                "yes" if r["mass_held_min"] >= record["target_mass"] else "no",
            )
        else:
            kept = "-" if r["kept"] is None else f"{r['kept']:.1%}"
            t.add_row(str(r["keep"]), kept, f"{r['share_of_bytes']:.1%}", "yes" if r["meets_target"] else "no")
    return t
