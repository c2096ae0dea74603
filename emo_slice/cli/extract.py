"""`emo-slice extract`: write a checkpoint holding K experts per layer."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from emo_slice.cli import app, cli_errors, console, print_json, warning_line
from emo_slice.cli.display import progress_bars
from emo_slice.cli.options import DType, Method, Rescale, max_memory_option, opt, spec_argument, spec_option, value
from emo_slice.cli.sweep_display import auto_keep_table
from emo_slice.eval.settings import EvalSettings
from emo_slice.slicing.profile_settings import ProfileSettings
from emo_slice.workflows import slice as workflow
from emo_slice.workflows.autok import AutoKSpec
from emo_slice.workflows.slice import SliceSpec

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
P, A, E = ProfileSettings, AutoKSpec, EvalSettings
JsonManifest = opt(
    "--json", bool, "Print machine-readable JSON on stdout instead of tables: the manifest (slice.json)."
)
BARS = {"profiling": "layers", "writing slice": "bytes", "slices scored": "slices"}


@app.command(epilog=EPILOG)
@cli_errors
def extract(
    model: str = spec_argument(SliceSpec, "model"),
    out: Path = spec_option(SliceSpec, "out"),
    keep: Optional[str] = spec_option(SliceSpec, "keep"),
    profiles: List[Path] = spec_option(SliceSpec, "profiles"),
    examples: List[str] = spec_option(SliceSpec, "examples"),
    experts: Optional[str] = spec_option(SliceSpec, "experts"),
    method: Method = spec_option(SliceSpec, "method", enum=Method, show_default=True),
    per_layer: bool = spec_option(SliceSpec, "per_layer", show_default=True),
    rescale: Rescale = spec_option(SliceSpec, "rescale", enum=Rescale, show_default=True),
    save_dtype: Optional[DType] = spec_option(SliceSpec, "save_dtype"),
    max_shard_size: str = spec_option(SliceSpec, "max_shard_size", show_default=True),
    overwrite: bool = spec_option(SliceSpec, "overwrite"),
    field: str = spec_option(P, "field", show_default=True),
    split: Optional[str] = spec_option(P, "split"),
    shots: Optional[int] = spec_option(P, "shots"),
    max_length: Optional[int] = spec_option(P, "max_length"),
    greedy: bool = spec_option(P, "greedy"),
    seed: int = spec_option(P, "seed", show_default=True),
    dtype: Optional[DType] = spec_option(P, "dtype"),
    device: str = spec_option(P, "device", show_default=True),
    layerwise: bool = spec_option(P, "layerwise"),
    max_memory: Optional[int] = max_memory_option(P),
    pool: Optional[int] = spec_option(P, "pool"),
    batch_size: int = spec_option(E, "batch_size", show_default=True),
    compose: Optional[str] = spec_option(SliceSpec, "compose"),
    target: Optional[float] = spec_option(A, "target"),
    target_mass: Optional[float] = spec_option(A, "target_mass"),
    tasks: List[str] = spec_option(A, "tasks"),
    lm: List[str] = spec_option(A, "lm"),
    metric: List[str] = spec_option(A, "metric"),
    limit: Optional[int] = spec_option(E, "limit"),
    json_out: JsonManifest = False,
):
    """Write a checkpoint holding K experts per layer, chosen by a profile, examples, ids or at random.

    Shared experts are always kept, last; kept routed experts keep their order and are renumbered,
    router rows sliced. With a profile (--examples/--profile), where a layer keeps at most top-k experts,
    the kept routed experts' down projections are scaled by the router probability they held (--rescale
    auto; on: every layer; off: a plain slice). Other tensors whose dtype does not change are copied as byte ranges; of the other files only what a checkpoint needs is copied (tokenizer, generation config,
    remote code, README/LICENSE: never other weights or training state); slice.json records what was
    kept and why. Stock EMO model code and its vLLM plugin load the result unchanged; an OLMoE, Qwen-MoE or
    Mixtral slice stays a stock checkpoint of its family (count field set, top-k lowered to K where needed).
    --field, --split,
    --shots, --max-length and --greedy apply to --examples; --device, --dtype, --layerwise and --pool to
    every model run (profiling --examples, scoring for --keep auto). Several --profile/--examples compose
    one slice for all those domains (--compose). --keep auto picks K: --target (scored on --task items held
    out of the calibration; --batch-size, --limit) or --target-mass (from the profile alone)."""
    where = dict(dtype=value(dtype), device=device, layerwise=layerwise, pool=pool or None, max_memory=max_memory)
    calib = P(field=field, split=split, shots=shots, seed=seed, max_length=max_length, greedy=greedy, **where)
    scoring = E(split=split, limit=limit, batch_size=batch_size, **where)
    auto = A(target, target_mass, tuple(tasks), tuple(lm), tuple(metric), scoring)
    choice = dict(keep=keep, profiles=tuple(map(str, profiles)), examples=tuple(examples), experts=experts)
    choice |= dict(method=value(method), compose=compose, per_layer=per_layer, rescale=value(rescale))
    write = dict(save_dtype=value(save_dtype), max_shard_size=max_shard_size, overwrite=overwrite)
    spec = SliceSpec(model=model, out=str(out), **choice, calibration=calib, auto=auto, **write)
    with progress_bars(BARS, enabled=not json_out) as bar:
        manifest = workflow.run(spec, progress=bar, warn=warning_line)
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
    factors = [f for f in ((manifest.get("rescale") or {}).get("factors") or []) if f is not None]
    if factors:
        shown = ", ".join(f"{f:.3f}" for f in factors[:8]) + (", ..." if len(factors) > 8 else "")
        console.print(
            f"rescaled (--rescale): the kept routed experts' down projections times the router probability they "
            f"held, per layer: {shown}"
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
    auto, comp = record.get("auto_keep"), record.get("composition")
    if auto:
        console.print(auto_keep_table(auto))
    if comp:
        for d in comp["domains"]:
            n = sum(len(x) for x in d["contributed"])
            console.print(f"{d['source']}: contributed {n} routed experts over the layers ({comp['rule']})")
