"""Profile and slice end to end, one call each: what `emo-slice profile` and `emo-slice extract` run.

- `write_profile(model, out, settings)`: check the output, profile the model layer by layer, save the
  profile file (atomically); `profile_summary` is the short result (`profile --json`).
- `make_slice(model, out, keep=..., ...)`: validate every input (choice of experts, dtypes, sizes, the
  output folder, the profile, K) before any long work, profile on `examples` if asked, plan, extract.

Both refuse an output inside the model folder, or an existing one without overwrite, before any work.
Progress is one callback, `progress(label, done, total)`, with labels "profiling" (layers) and "writing
slice" (bytes); `warn(message)` receives what the caller should show as a warning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from emo_slice.errors import UsageError

Progress = Callable[[str, int, Optional[int]], None]
PROFILING, WRITING = "profiling", "writing slice"
PER_LAYER_NOTE = (
    "--per-layer writes num_experts_per_layer, which only EMO's own model code reads (not vLLM or other runtimes)"
)


def _phase(progress: Progress | None, label: str):
    return None if progress is None else (lambda done, total: progress(label, done, total))


def default_profile_path(model_folder: str | os.PathLike) -> Path:
    """MODELNAME.profile.json in the current folder."""
    return Path(f"{Path(model_folder).resolve().name}.profile.json")


def write_profile(
    model, out: str | os.PathLike | None, settings, *, overwrite: bool = False, progress: Progress | None = None
) -> tuple[dict, Path]:
    """Profile `model` (folder, Hub id or Checkpoint) with `settings` (ProfileSettings) and save it to `out`
    (default MODELNAME.profile.json); returns (profile, path)."""
    from emo_slice.artifacts import check_output, output_lock
    from emo_slice.io.checkpoint import Checkpoint
    from emo_slice.slicing.profile import profile_model
    from emo_slice.slicing.profile_file import save_profile

    if settings.keep is not None and not settings.greedy:
        raise UsageError("--keep only applies with --greedy (a one-pass profile serves any K); drop it or add --greedy")
    ckpt = model if isinstance(model, Checkpoint) else Checkpoint(model)
    out = default_profile_path(ckpt.path) if out is None else out
    check_output(out, inputs=[ckpt.path], overwrite=overwrite, suffixes=(".json",))
    with output_lock(out):  # held while profiling: a second writer of the same file refuses
        prof = profile_model(model, settings, progress=_phase(progress, PROFILING))
        return prof, save_profile(prof, out)


def profile_summary(profile: dict, path: str | os.PathLike) -> dict:
    """The short result of a profile run: file, tokens, model fingerprint, greedy settings, concentration."""
    from emo_slice.slicing.profile_file import concentration

    return {
        "profile": str(path),
        "tokens": profile["tokens"],
        "layers": len(profile["layers"]),
        "fingerprint": profile["model"]["fingerprint"],
        "tokenizer": profile["inputs"].get("tokenizer"),
        "greedy": profile["greedy"],
        "concentration": concentration(profile),
    }


def _check_choice(profile_path, examples, experts, method: str, greedy: bool, dtype) -> None:
    """Exactly one way to choose the experts (or --method random), a known method, options that apply."""
    from emo_slice.slicing.select import METHODS

    given = [
        f for f, v in (("--profile", profile_path), ("--examples", examples), ("--experts", experts)) if v is not None
    ]
    if len(given) > 1:
        raise UsageError(
            f"{' and '.join(given)} both choose the experts; give only one of --profile, --examples, --experts"
        )
    if not given and method != "random":
        raise UsageError(
            "say how to choose the experts: --profile FILE, --examples SRC, --experts LIST, or --method random"
        )
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    if greedy and examples is None:
        raise UsageError(
            "--greedy applies with --examples (or make a greedy profile with `emo-slice profile --greedy`)"
        )
    if dtype is not None and examples is None:
        raise UsageError(
            f"--dtype {dtype} is the compute dtype of profiling --examples, and nothing runs here; "
            "to store the slice in another dtype pass --save-dtype"
        )


def make_slice(
    model,
    out: str | os.PathLike,
    *,
    keep: str | int | None = None,
    profile_path: str | os.PathLike | None = None,
    examples: str | None = None,
    experts: str | None = None,
    method: str = "mean-prob",
    per_layer: bool = False,
    greedy: bool = False,
    seed: int = 0,
    save_dtype: str | None = None,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    field: str = "text",
    split: str | None = None,
    shots: int | None = None,
    max_length: int = 1024,
    dtype: str | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict:
    """Write a checkpoint of `model` holding `keep` experts per layer to `out`; returns the manifest (slice.json).

    The experts come from one of: `profile_path` (a profile file), `examples` (profiled now, with field,
    split, shots, max_length, dtype = compute dtype, greedy), `experts` (ids by hand), or method "random".
    save_dtype: stored dtype of the slice (None: unchanged, bytes copied verbatim).
    """
    from emo_slice.artifacts import check_output, output_lock, parse_size
    from emo_slice.io.checkpoint import Checkpoint, parse_dtype
    from emo_slice.slicing.extract import copied_files, extract
    from emo_slice.slicing.profile import ProfileSettings
    from emo_slice.slicing.select import plan_slice

    _check_choice(profile_path, examples, experts, method, greedy, dtype)
    parse_dtype(save_dtype, "--save-dtype")
    parse_dtype(dtype, "--dtype")
    parse_size(max_shard_size)
    ckpt = model if isinstance(model, Checkpoint) else Checkpoint(model)
    check_output(out, inputs=[ckpt.path], overwrite=overwrite, folder=True)
    copied_files(ckpt.path)  # refuses a link out of the folder before any work
    settings = None
    if examples is not None:
        settings = ProfileSettings(
            examples=examples,
            field=field,
            split=split,
            shots=shots,
            seed=seed,
            max_length=max_length,
            dtype=dtype,
            greedy=greedy,
            keep=keep if greedy else None,
            method=method,
        )
    with output_lock(out):  # held from here to the end: a second writer of the same folder refuses
        prof = _scores(ckpt, keep, profile_path, settings, experts, per_layer, seed, progress)
        plan = plan_slice(ckpt, keep, experts=experts, profile=prof, method=method, per_layer=per_layer, seed=seed)
        for message in plan.warnings + ([PER_LAYER_NOTE] if per_layer else []):
            if warn is not None:
                warn(message)
        return extract(
            ckpt,
            plan,
            out,
            dtype=save_dtype,
            overwrite=overwrite,
            max_shard_size=max_shard_size,
            progress=_phase(progress, WRITING),
        )


def _scores(ckpt, keep, profile_path, settings, experts, per_layer: bool, seed: int, progress) -> dict | None:
    """The profile the plan ranks by: loaded from profile_path (checked against the model), or made now from
    settings (after --keep is validated, so nothing long runs on a bad --keep), or None."""
    from emo_slice.slicing.profile import profile_model
    from emo_slice.slicing.profile_file import check_profile_matches, load_profile
    from emo_slice.slicing.select import plan_slice

    prof = None
    if profile_path is not None:
        prof = load_profile(profile_path)
        check_profile_matches(prof, ckpt)
    if experts is None:  # validate --keep before running anything long
        plan_slice(ckpt, keep, method="random", per_layer=per_layer, seed=seed)
    if settings is not None:
        prof = profile_model(ckpt, settings, progress=_phase(progress, PROFILING))
    return prof
