"""What `sweep` and `extract --keep auto` print: the sweep table and the automatic-K table (rich)."""

from __future__ import annotations

from rich import box
from rich.table import Table

from emo_slice.cli.display import _fmt, human
from emo_slice.eval.metrics import HIGHER_IS_BETTER
from emo_slice.workflows.sweep import headline_metrics


def _cell(metric: str, v, kept) -> str:
    return _fmt(metric, v) + (f"\n({kept:.1%})" if kept is not None else "")


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _sweep_columns(t: Table, sweeps: list[dict], shown: dict, n_ctrl: int) -> None:
    for col in ("K", "bytes", "of full"):
        t.add_column(col, justify="right")
    for sw in sweeps:
        for task, ms in shown.items():
            for m in ms:
                arrow = "" if HIGHER_IS_BETTER.get(m, True) else " ↓"
                where = "" if len(shown) == 1 else f"{task} "
                name = m.replace("_per_", "/")
                t.add_column(f"{sw['label']}\n{where}{name}{arrow}", justify="right")
                if n_ctrl:
                    t.add_column(f"{sw['label']}\nrandom", justify="right")
        t.add_column(f"{sw['label']}\ntok/s", justify="right")


def _tok_s(v) -> str:
    return f"{v:,.0f}" if v else "-"


def sweep_table(data: dict, metrics: list[str] | None = None) -> Table:
    """One row per K (and the full model): bytes, share of the full model's bytes, then for every model each
    shown metric with the share of the full score kept, the share the random controls keep, and tokens/s."""
    sweeps = data["sweeps"]
    first = sweeps[0]
    shown = {k: v for k, v in headline_metrics(first["full"]["results"], metrics or None).items() if v}
    n_ctrl = first["controls"]["n"]
    only = f" on {next(iter(shown))}" if len(shown) == 1 else ""
    t = Table(
        box=box.SIMPLE_HEAD,
        title=f"Sweep{only}: experts chosen by {first['method']}, against the full model on the same items",
        caption="(x%): share of the full model's score kept; ↓ lower is better"
        + (f"; random: share kept by random experts (mean of {n_ctrl})" if n_ctrl else ""),
    )
    _sweep_columns(t, sweeps, shown, n_ctrl)
    for k in first["keeps"]:
        rows = [[r for r in sw["rows"] if r["keep"] == k] for sw in sweeps]
        mine0 = next(r for r in rows[0] if r["kind"] == "profile")
        cells = [f"{k}\n({k / first['num_experts']:.0%})", human(mine0["bytes"]), f"{mine0['share_of_bytes']:.1%}"]
        for sw_rows in rows:
            mine = next(r for r in sw_rows if r["kind"] == "profile")
            ctrl = [r for r in sw_rows if r["kind"] == "random"]
            for task, ms in shown.items():
                for m in ms:
                    cells.append(_cell(m, mine["results"][task].get(m), mine["kept"][task].get(m)))
                    if n_ctrl:
                        kept = _mean([r["kept"][task].get(m) for r in ctrl])
                        cells.append("-" if kept is None else f"{kept:.1%}")
            cells.append(_tok_s(mine["tokens_per_s"]))
        t.add_row(*cells, end_section=True)
    cells = [f"{first['num_experts']}\n(all)", human(first["full"]["bytes"]), "100%"]
    for sw in sweeps:
        for task, ms in shown.items():
            for m in ms:
                cells += [_fmt(m, sw["full"]["results"][task].get(m))] + (["-"] if n_ctrl else [])
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
