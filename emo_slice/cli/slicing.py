"""`emo-slice profile` and `emo-slice extract`: score experts on a few examples, write a sliced checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TransferSpeedColumn
from rich.table import Table

from emo_slice.cli import app, cli_errors, console, err_console, print_json
from emo_slice.errors import UsageError

PROFILE_EPILOG = """Examples:

  emo-slice profile ./Emo_1b14b_1T --examples code-5shot.txt --out code.profile.json

  emo-slice profile ./model --examples tasks/code.jsonl --shots 5 --out code.profile.json

  emo-slice profile ./model --examples docs.jsonl --field text --greedy --keep 16 --out code.greedy.json
"""

EXTRACT_EPILOG = """Examples:

  emo-slice extract ./Emo_1b14b_1T --keep 16 --profile code.profile.json --out ./emo-code-16

  emo-slice extract ./model --keep 12.5% --examples tasks/code.jsonl --shots 5 --out ./slice

  emo-slice extract ./model --experts 1,3,4,6 --out ./slice          (same experts in every layer)

  emo-slice extract ./model --keep 16 --method random --seed 1 --out ./random-16

  emo-slice extract ./model --keep 16 --profile p.json --per-layer --out ./var   (EMO model code only)
"""


def _layer_progress(label: str):
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("layers"), TimeElapsedColumn(),
                   console=err_console, transient=True)
    return bar


def _run_profile(model: str, examples: str, field: str, split, shots, seed, max_length, dtype, greedy, keep,
                 method, quiet: bool):
    from emo_slice.slicing.profile import ProfileSettings, profile_model

    settings = ProfileSettings(examples=examples, field=field, split=split, shots=shots, seed=seed,
                               max_length=max_length, dtype=dtype, greedy=greedy, keep=keep, method=method)
    if quiet:
        return profile_model(model, settings)
    with _layer_progress("profiling") as bar:
        task = bar.add_task("profile", total=None)
        return profile_model(model, settings, progress=lambda d, t: bar.update(task, completed=d, total=t))


def _concentration_table(profile: dict) -> Table:
    from emo_slice.slicing.profile_file import concentration

    rows = concentration(profile)
    n = rows[0]["routed"] if rows else 0
    t = Table(title=f"Routing concentration ({profile['tokens']:,} tokens; share of router probability mass)")
    t.add_column("layer", justify="right")
    t.add_column(f"top 25% ({rows[0]['n_0.25'] if rows else 0} of {n})", justify="right")
    t.add_column(f"top 12.5% ({rows[0]['n_0.125'] if rows else 0} of {n})", justify="right")
    t.add_column("experts used", justify="right")
    for r in rows:
        cells = []
        for key, base in (("top_0.25", 0.25), ("top_0.125", 0.125)):
            v = r[key]
            style = "bold green" if v >= 2 * base else "green" if v >= 1.4 * base else "yellow" if v >= 1.1 * base else "red"
            cells.append(f"[{style}]{v:.0%}[/]")
        t.add_row(str(r["layer"]), *cells, f"{r['used']}/{r['routed']}")
    return t


@app.command(epilog=PROFILE_EPILOG)
@cli_errors
def profile(
    model: str = typer.Argument(..., help="Checkpoint folder or Hugging Face Hub id."),
    examples: str = typer.Option(..., "--examples", help="Calibration input: a .txt file (one document), JSONL "
                                 "(--field), a Hugging Face dataset (saved folder or cached name), or with --shots "
                                 "a multiple-choice task file turned into a k-shot prompt with gold answers."),
    out: Optional[Path] = typer.Option(None, "--out", help="Profile file to write (JSON). Default: "
                                       "MODELNAME.profile.json in the current folder."),
    field: str = typer.Option("text", "--field", help="Field holding the text in JSONL/datasets."),
    split: Optional[str] = typer.Option(None, "--split", help="Dataset split (default test, validation or train)."),
    shots: Optional[int] = typer.Option(None, "--shots", help="Treat --examples as a multiple-choice task and "
                                        "profile one prompt of this many demonstrations (gold answers appended)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the demonstrations draw (and of --method random)."),
    max_length: int = typer.Option(1024, "--max-length", help="Longest row in tokens; longer documents are cut "
                                   "into several rows."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Compute dtype: float32 or bfloat16 (default: stored)."),
    greedy: bool = typer.Option(False, "--greedy", help="EMO paper's layer-by-layer selection: score layer l on the "
                                "model whose earlier layers are already sliced to --keep by --method."),
    keep: Optional[str] = typer.Option(None, "--keep", help="With --greedy: experts kept per layer, shared included "
                                       "(a count or a share like 25%)."),
    method: str = typer.Option("mean-prob", "--method", help="With --greedy: how earlier layers are sliced "
                               "(mean-prob, frequency, reap, easy-ep, random)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary instead of tables."),
):
    """Score every routed expert of every layer on calibration input: mean router probability (EMO's
    default), selection frequency, REAP, EASY-EP and token counts. Runs layer by layer from the
    memory-mapped checkpoint (peak memory: about one layer plus activations). The profile file is
    reusable: `extract` slices at any K and method from it without running the model again."""
    from emo_slice.io.checkpoint import Checkpoint
    from emo_slice.slicing.extract import check_output
    from emo_slice.slicing.profile_file import concentration, save_profile

    if keep is not None and not greedy:
        raise UsageError("--keep only applies with --greedy (a one-pass profile serves any K); drop it or add --greedy")
    ckpt = Checkpoint(model)
    if out is None:
        out = Path(f"{ckpt.path.resolve().name}.profile.json")
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as code.profile.json")
    check_output(ckpt.path, out, overwrite=True)
    prof = _run_profile(model if not isinstance(model, Checkpoint) else model, examples, field, split, shots, seed,
                        max_length, dtype, greedy, keep, method, json_out)
    path = save_profile(prof, out)
    if json_out:
        print_json({"profile": str(path), "tokens": prof["tokens"], "fingerprint": prof["model"]["fingerprint"],
                    "greedy": prof["greedy"], "concentration": concentration(prof)})
        return
    inputs = prof["inputs"]
    err_console.print(f"tokenizer: {inputs['tokenizer']}")
    console.print(_concentration_table(prof))
    console.print(f"wrote {path} ({prof['tokens']:,} tokens, {len(prof['layers'])} layers"
                  + (f", greedy K={prof['greedy']['keep']} {prof['greedy']['method']}" if greedy else "")
                  + f"). Next: emo-slice extract {model} --keep K --profile {path} --out DIR")


@app.command(epilog=EXTRACT_EPILOG)
@cli_errors
def extract(
    model: str = typer.Argument(..., help="Checkpoint folder or Hugging Face Hub id to slice (never modified)."),
    keep: Optional[str] = typer.Option(None, "--keep", help="Experts kept per layer, counting the shared ones (as "
                                       "num_experts does): a count like 16 or a share like 25%."),
    out: Path = typer.Option(..., "--out", help="Folder for the sliced checkpoint (must be empty or absent, and "
                             "outside the source)."),
    profile_path: Optional[Path] = typer.Option(None, "--profile", help="Profile file from `emo-slice profile`."),
    examples: Optional[str] = typer.Option(None, "--examples", help="Calibration input: profile it now (as "
                                           "`emo-slice profile`), then slice."),
    experts: Optional[str] = typer.Option(None, "--experts", help="Routed experts to keep by hand: '1,3,4,6' in every "
                                          "layer, or one list per layer separated by ';'."),
    method: str = typer.Option("mean-prob", "--method", help="Ranking: mean-prob (EMO default), frequency, reap, "
                               "easy-ep, or random (seeded, needs no scores)."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Rank experts across layers (different K per layer, "
                                   "written as num_experts_per_layer): loadable by EMO's own model code only."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Stored dtype of the slice (default: unchanged, "
                                        "bytes copied verbatim)."),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest shard, e.g. 500MB, 5GB."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it already holds files."),
    field: str = typer.Option("text", "--field", help="With --examples: field holding the text in JSONL/datasets."),
    split: Optional[str] = typer.Option(None, "--split", help="With --examples: dataset split."),
    shots: Optional[int] = typer.Option(None, "--shots", help="With --examples: a multiple-choice task as a "
                                        "k-shot prompt."),
    greedy: bool = typer.Option(False, "--greedy", help="With --examples: the EMO paper's layer-by-layer selection."),
    seed: int = typer.Option(0, "--seed", help="Seed of --method random and of the demonstrations draw."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest (slice.json) as JSON."),
):
    """Write a checkpoint holding K experts per layer (shared experts always kept, last): kept routed
    experts keep their order and are renumbered, router rows sliced, nothing rescaled. Tensors whose
    dtype does not change are copied as byte ranges; every other file is copied; slice.json records
    what was kept and why. Stock EMO model code and its vLLM plugin load the result unchanged."""
    from emo_slice.artifacts import parse_size
    from emo_slice.io.checkpoint import Checkpoint, parse_dtype
    from emo_slice.slicing.extract import check_output, extract as do_extract
    from emo_slice.slicing.profile_file import check_profile_matches, load_profile
    from emo_slice.slicing.select import METHODS, plan_slice

    given = [f for f, v in (("--profile", profile_path), ("--examples", examples), ("--experts", experts)) if v is not None]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} both choose the experts; give only one of --profile, --examples, --experts")
    if not given and method != "random":
        raise UsageError("say how to choose the experts: --profile FILE, --examples SRC, --experts LIST, "
                         "or --method random")
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    if greedy and examples is None:
        raise UsageError("--greedy applies with --examples (or make a greedy profile with `emo-slice profile --greedy`)")
    parse_dtype(dtype)
    parse_size(max_shard_size)
    ckpt = Checkpoint(model)
    check_output(ckpt.path, out, overwrite)
    prof = None
    if profile_path is not None:
        prof = load_profile(profile_path)
        check_profile_matches(prof, ckpt)
    # validate --keep before running anything long
    plan_slice(ckpt, keep, experts=experts, method="random", per_layer=per_layer, seed=seed) if experts is None \
        else None
    if examples is not None:
        prof = _run_profile(model, examples, field, split, shots, seed, 1024, None, greedy,
                            keep if greedy else None, method, json_out)
    plan = plan_slice(ckpt, keep, experts=experts, profile=prof, method=method, per_layer=per_layer, seed=seed)
    for w in plan.warnings:
        err_console.print(f"[yellow]warning:[/] {w}")
    if per_layer:
        err_console.print("[yellow]note:[/] --per-layer writes num_experts_per_layer, which only EMO's own model code "
                          "reads (not vLLM or other runtimes)")
    if json_out:
        manifest = do_extract(ckpt, plan, out, dtype=dtype, overwrite=overwrite, max_shard_size=max_shard_size)
        print_json(manifest)
        return
    with Progress(TextColumn("writing slice"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("extract", total=None)
        manifest = do_extract(ckpt, plan, out, dtype=dtype, overwrite=overwrite, max_shard_size=max_shard_size,
                              progress=lambda d, t: bar.update(task, completed=d, total=t))
    kept = manifest["kept_experts"]
    K = manifest["keep"]
    same = all(k == kept[0] for k in kept)
    console.print(f"wrote {out}: {K if isinstance(K, int) else K} experts per layer "
                  f"(num_experts_per_tok {manifest['num_experts_per_tok']}), method {manifest['method']}, "
                  f"{len(manifest['files'])} weight files")
    if same:
        console.print(f"kept experts (original ids, every layer): {kept[0]}")
    else:
        for l, ids in enumerate(kept[:4]):
            console.print(f"layer {l}: {ids}")
        if len(kept) > 4:
            console.print(f"... {len(kept) - 4} more layers in {out}/slice.json")
