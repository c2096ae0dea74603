"""`emo-slice tasks`: the built-in benchmarks `eval --task NAME` takes, and whether their data is cached."""

from __future__ import annotations

from rich.table import Table

from emo_slice.cli import app, cli_errors, console, print_json
from emo_slice.cli.options import Json, opt
from emo_slice.data.benchmarks import listing

EPILOG = """Examples:

  emo-slice tasks

  emo-slice tasks --all --json

  emo-slice eval ./slice --against ./full --task mmlu --shots 5      (the 57 subjects and lm-eval's groups)

  emo-slice eval ./slice --task arc_easy=./data/arc_easy            (a local copy instead of the cache)
"""

AllTasks = opt("--all", bool, "Also list every subtask (mmlu_SUBJECT, mmlu_pro_CATEGORY:mc).")


def _table(rows: list[dict]):
    t = Table(title="Built-in benchmarks: eval --task NAME (NAME=FOLDER: a local copy; NAME:mc: OLMES's format)")
    t.add_column("name", no_wrap=True)
    for col in ("kind", "choices", "split", "few-shot", "dataset", "cached"):
        t.add_column(col, overflow="fold")
    for r in rows:
        name = r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else "")
        fewshot = ", ".join(x for x in (r["fewshot_split"], r["sampler"].replace("_", " ")) if x)
        kind = {"multiple_choice": "MC", "generative": "generative"}.get(r["kind"], r["kind"])
        kind += "" if r["available"] else " (not built yet)"
        cached = "[green]yes[/]" if r["cached"] else "[yellow]no[/]"
        t.add_row(name, kind, r["choices"], r["split"] or "-", fewshot, r["dataset"], cached)
    return t


@app.command(epilog=EPILOG)
@cli_errors
def tasks(all_tasks: AllTasks = False, json_out: Json = False):
    """List the built-in benchmarks: multiple choice in lm-evaluation-harness's prompt formats (NAME:mc:
    OLMES's lettered format), their groups, and the generative ones, with the split scored, where few-shot
    examples come from, the Hugging Face dataset, and whether it is in the local cache."""
    rows = listing(all_tasks)
    if json_out:
        print_json(rows)
        return
    console.print(_table(rows))
    missing = sorted({r["dataset"].split(":")[0] for r in rows if not r["cached"]})
    if missing:
        console.print(
            f"{len(missing)} dataset(s) not cached: fetch each with `hf download REPO --repo-type dataset` "
            f"(e.g. `hf download {missing[0]} --repo-type dataset`), or give a local copy with --task NAME=FOLDER"
        )
