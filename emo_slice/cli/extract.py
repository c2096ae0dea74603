"""`emo-slice extract`: write a checkpoint holding K experts per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from emo_slice.cli import app, cli_errors, console, print_json, warning_line
from emo_slice.cli.options import (
    ComputeDType,
    DType,
    Field,
    Greedy,
    MaxLength,
    MaxShardSize,
    Method,
    Overwrite,
    Shots,
    Split,
    calibration,
    keep_option,
    method_option,
    opt,
    out_option,
    save_dtype_option,
    seed_option,
    value,
)

EPILOG = """Examples:

  emo-slice extract ./Emo_1b14b_1T --keep 16 --profile code.profile.json --out ./emo-code-16

  emo-slice extract ./model --keep 12.5% --examples tasks/code.jsonl --shots 5 --out ./slice

  emo-slice extract ./model --experts 1,3,4,6 --out ./slice          (same experts in every layer)

  emo-slice extract ./model --keep 16 --method random --seed 1 --out ./random-16

  emo-slice extract ./model --keep 16 --profile p.json --per-layer --out ./var   (EMO model code only)

  emo-slice extract ./model --keep 16 --profile code.json --profile math.json --compose union --out ./code-math

  emo-slice extract ./model --keep auto --target 0.99 --task tasks/code.jsonl --out ./code-auto

  emo-slice extract ./model --keep auto --target-mass 0.9 --profile code.json --out ./code-mass
"""


Profiles = opt("--profile", List[Path], "Profile file from `emo-slice profile`; once per domain to compose a slice.")
ExamplesList = opt(
    "--examples",
    List[str],
    "Calibration input (as `profile --examples`), profiled now; once per domain to compose a slice.",
)
Compose = opt(
    "--compose",
    Optional[str],
    "With several domains: union (round robin over the domains' rankings; the default) or sum (of each domain's "
    "scores divided by their layer total).",
)
Target = opt("--target", Optional[float], "With --keep auto: smallest K keeping this share of the full score.")
TargetMass = opt(
    "--target-mass", Optional[float], "With --keep auto: smallest K holding this share of the routing mass per layer."
)
Tasks = opt("--task", List[str], "With --target: task scored (calibration items held out). Repeatable.")
Texts = opt("--lm", List[str], "With --target: text scored by bits per byte. Repeatable.")
Metric = opt("--metric", List[str], "With --target: the metric kept (default acc_per_char / bits_per_byte).")
Limit = opt("--limit", Optional[int], "With --target: score only the first N held-out items of each task.")
SourceArg = Annotated[
    str, typer.Argument(help="Checkpoint folder or Hub id to slice (never modified).", show_default=False)
]
OutFolder = Annotated[Path, out_option("Folder for the sliced checkpoint (absent or empty, and outside the source).")]
Keep = Annotated[Optional[str], keep_option()]
Experts = opt(
    "--experts",
    Optional[str],
    "Routed experts to keep by hand: '1,3,4,6' in every layer, or one list per layer separated by ';'.",
)
MethodOpt = Annotated[Method, method_option()]
PerLayer = opt(
    "--per-layer",
    bool,
    "Rank experts across layers (different K per layer, written as num_experts_per_layer): EMO's own model code only.",
    show_default=True,
)
SaveDType = Annotated[Optional[DType], save_dtype_option("unchanged, bytes copied verbatim")]
Seed = Annotated[int, seed_option("--method random and of the demonstrations draw")]
JsonManifest = opt("--json", bool, "Print the manifest (slice.json) as JSON.", show_default=True)
BARS = {"profiling": "layers", "writing slice": "bytes", "slices scored": "slices"}


@app.command(epilog=EPILOG)
@cli_errors
def extract(
    model: SourceArg,
    out: OutFolder,
    keep: Keep = None,
    profile_path: Profiles = [],
    examples: ExamplesList = [],
    experts: Experts = None,
    method: MethodOpt = Method.mean_prob,
    per_layer: PerLayer = False,
    save_dtype: SaveDType = None,
    max_shard_size: MaxShardSize = "5GB",
    overwrite: Overwrite = False,
    field: Field = "text",
    split: Split = None,
    shots: Shots = None,
    max_length: MaxLength = None,
    dtype: ComputeDType = None,
    greedy: Greedy = False,
    seed: Seed = 0,
    compose: Compose = None,
    target: Target = None,
    target_mass: TargetMass = None,
    task: Tasks = [],
    lm: Texts = [],
    metric: Metric = [],
    limit: Limit = None,
    json_out: JsonManifest = False,
):
    """Write a checkpoint holding K experts per layer, chosen by a profile, examples, ids or at random.

    Shared experts are always kept, last; kept routed experts keep their order and are renumbered,
    router rows sliced, nothing rescaled. Tensors whose dtype does not change are copied as byte
    ranges; of the other files only what a checkpoint needs is copied (tokenizer, generation config,
    remote code, README/LICENSE: never other weights or training state); slice.json records what was
    kept and why. Stock EMO model code and its vLLM plugin load the result unchanged. --field, --split, --shots, --max-length, --dtype and
    --greedy apply to --examples. Several --profile/--examples compose one slice for all those domains
    (--compose). --keep auto picks K: --target (scored on --task items held out of the calibration) or
    --target-mass (from the profile alone)."""
    from emo_slice.cli.display import progress_bars
    from emo_slice.workflows.slice import make_slice

    calib = calibration(examples, field, split, shots, seed, max_length, dtype)
    choice = dict(keep=keep, profile_path=profile_path, experts=experts, method=value(method), greedy=greedy)
    auto = dict(compose=compose, target=target, target_mass=target_mass, tasks=task, lm=lm, metric=metric or None)
    write = dict(per_layer=per_layer, save_dtype=value(save_dtype), max_shard_size=max_shard_size, overwrite=overwrite)
    eval_opts = {"limit": limit, "split": split}
    with progress_bars(BARS, enabled=not json_out) as bar:
        manifest = make_slice(
            model, out, **choice, **calib, **auto, **write, eval_opts=eval_opts, progress=bar, warn=warning_line
        )
    if json_out:
        print_json(manifest)
        return
    _print_manifest(manifest, out)


def _print_manifest(manifest: dict, out: Path) -> None:
    """The choice (auto K, composition), K and the experts kept (the first 4 layers when they differ)."""
    _print_choice(manifest.get("profile") or {})
    kept = manifest["kept_experts"]
    console.print(
        f"wrote {out}: {manifest['keep']} experts per layer (num_experts_per_tok "
        f"{manifest['num_experts_per_tok']}), method {manifest['method']}, {len(manifest['files'])} "
        "weight files"
    )
    if all(k == kept[0] for k in kept):
        console.print(f"kept experts (original ids, every layer): {kept[0]}")
        return
    for layer, ids in enumerate(kept[:4]):
        console.print(f"layer {layer}: {ids}")
    if len(kept) > 4:
        console.print(f"... {len(kept) - 4} more layers in {out}/slice.json")


def _print_choice(record: dict) -> None:
    """What --keep auto tried, and which domain contributed what to a composed slice."""
    from emo_slice.cli.sweep_display import auto_keep_table

    auto, comp = record.get("auto_keep"), record.get("composition")
    if auto:
        console.print(auto_keep_table(auto))
    if comp:
        for d in comp["domains"]:
            n = sum(len(x) for x in d["contributed"])
            console.print(f"{d['source']}: contributed {n} routed experts over the layers ({comp['rule']})")
