"""Slice end to end, one call: what `emo-slice extract` runs.

- `make_slice(model, out, keep=..., ...)`: validate every input (choice of experts, dtypes, sizes, the
  output folder, the profile, K) before any long work, profile on `examples` if asked, plan, extract.
  Several profiles / examples compose one slice (slicing/compose.py); keep="auto" picks K first
  (workflows/autok.py: a score target on held-out items, or a routing-mass target from the profile).

It refuses an output inside the model folder, or an existing one without overwrite, before any work.
Progress is one callback, `progress(label, done, total)`, with labels "profiling" (layers) and "writing
slice" (bytes); `warn(message)` receives what the caller should show as a warning.
"""

from __future__ import annotations

import os
from typing import Callable

from emo_slice.errors import UsageError
from emo_slice.workflows.common import PROFILING, WRITING, Progress
from emo_slice.workflows.common import phase as _phase

PER_LAYER_NOTE = (
    "--per-layer writes num_experts_per_layer, which only EMO's own model code reads (not vLLM or other runtimes)"
)


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


def _as_list(x) -> list:
    if x is None:
        return []
    return [x] if isinstance(x, (str, os.PathLike)) else list(x)


def _check_compose(n_domains: int, compose, method, greedy, per_layer: bool = False) -> None:
    """Several domains need a rule (union by default), and one-pass profiles."""
    from emo_slice.slicing.compose import RULES, check_composable

    if compose is not None and compose not in RULES:
        raise UsageError(f"--compose {compose!r} is unknown; choose one of {', '.join(RULES)}")
    if compose is not None and n_domains < 2:
        raise UsageError("--compose combines several domains: give --profile (or --examples) once per domain")
    if n_domains > 1 and greedy:
        raise UsageError("--greedy slices for one input; compose one-pass profiles instead")
    if n_domains > 1:
        check_composable([], method, compose or "union", per_layer)


def _check_auto(keep, target, target_mass, tasks, lm, experts, method, greedy) -> bool:
    """Whether K is chosen automatically (--keep auto); it needs exactly one target, and scores."""
    auto = keep is not None and str(keep).strip().lower() == "auto"
    if not auto:
        if target is not None or target_mass is not None:
            raise UsageError("--target and --target-mass choose K: use them with --keep auto")
        return False
    from emo_slice.workflows.autok import check_target

    check_target(target, "--target")
    check_target(target_mass, "--target-mass")
    if (target is None) == (target_mass is None):
        raise UsageError("--keep auto needs one of --target SHARE (scored on --task) or --target-mass SHARE (free)")
    if target is not None and not tasks and not lm:
        raise UsageError("--keep auto --target scores slices: give the --task (or --lm) to keep the score on")
    if experts is not None or method == "random" or greedy:
        raise UsageError(
            "--keep auto ranks experts by scores: use --profile or --examples (not --experts, "
            "--method random or --greedy)"
        )
    return True


def _check_output(model, out, save_dtype, dtype, max_shard_size, overwrite: bool):
    """The dtypes, the shard size and the output folder, checked before any work; returns the Checkpoint."""
    from emo_slice.artifacts import check_output, parse_size
    from emo_slice.io.checkpoint import Checkpoint, parse_dtype
    from emo_slice.slicing.extract import copied_files

    parse_dtype(save_dtype, "--save-dtype")
    parse_dtype(dtype, "--dtype")
    parse_size(max_shard_size)
    ckpt = model if isinstance(model, Checkpoint) else Checkpoint(model)
    check_output(out, inputs=[ckpt.path], overwrite=overwrite, folder=True)
    copied_files(ckpt.path)  # refuses a link out of the folder before any work
    return ckpt


def make_slice(
    model,
    out: str | os.PathLike,
    *,
    keep: str | int | None = None,
    profile_path=None,
    examples=None,
    experts: str | None = None,
    method: str = "mean-prob",
    compose: str | None = None,
    target: float | None = None,
    target_mass: float | None = None,
    tasks=(),
    lm=(),
    metric: list[str] | None = None,
    eval_opts: dict | None = None,
    per_layer: bool = False,
    greedy: bool = False,
    seed: int = 0,
    save_dtype: str | None = None,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    field: str = "text",
    split: str | None = None,
    shots: int | None = None,
    max_length: int | None = None,
    dtype: str | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict:
    """Write a checkpoint of `model` holding `keep` experts per layer to `out`; returns the manifest (slice.json).

    The experts come from one of: `profile_path` (a profile file), `examples` (profiled now, with field,
    split, shots, max_length, dtype = compute dtype, greedy), `experts` (ids by hand), or method "random".
    Several profiles / examples (one per domain) make one composed slice (`compose`: union or sum, see
    slicing/compose.py). keep="auto" picks K (workflows/autok.py): `target` (share of the full model's score
    on `tasks` / `lm`, scored with `eval_opts`, on items held out of the calibration; with no profile or
    examples the first task's `shots` (default 5) items calibrate) or `target_mass` (routing mass, free).
    save_dtype: stored dtype of the slice (None: unchanged, bytes copied verbatim).
    """
    from emo_slice.artifacts import output_lock

    profiles, examples = _as_list(profile_path), _as_list(examples)
    if str(keep).strip().lower() == "auto" and target is not None and not (profiles or examples or experts) and tasks:
        examples, shots = [tasks[0]], shots or 5  # calibrate on the task; those items are held out of the scoring
    _check_choice(profiles or None, examples or None, experts, method, greedy, dtype)
    _check_compose(len(profiles) + len(examples), compose, method, greedy, per_layer)
    auto = _check_auto(keep, target, target_mass, tasks, lm, experts, method, greedy)
    ckpt = _check_output(model, out, save_dtype, dtype, max_shard_size, overwrite)
    calib = dict(field=field, split=split, shots=shots, seed=seed, max_length=max_length, dtype=dtype, greedy=greedy)
    settings = _profile_settings(examples, calib, keep, method)
    with output_lock(out):  # held from here to the end: a second writer of the same folder refuses
        profs = _scores(ckpt, keep, not auto, profiles, settings, experts, per_layer, seed, progress)
        sources = [str(p) for p in profiles] + examples
        planner = _planner(ckpt, profs, sources, experts, method, per_layer, seed, compose or "union")
        targets = (target, target_mass, tasks, lm, metric, eval_opts) if auto else None
        plan = _plan(ckpt, planner, profs, keep, targets)
        return _write(ckpt, plan, out, per_layer, warn, save_dtype, overwrite, max_shard_size, progress)


def _profile_settings(examples: list, calib: dict, keep, method: str) -> list:
    """One ProfileSettings per --examples source (a greedy one slices earlier layers to keep by method)."""
    from emo_slice.slicing.profile import ProfileSettings

    greedy_keep = keep if calib["greedy"] else None
    return [ProfileSettings(examples=src, **calib, keep=greedy_keep, method=method) for src in examples]


def _plan(ckpt, planner, profs: list[dict], keep, targets: tuple | None):
    """planner(keep); with targets (--keep auto: target, target_mass, tasks, lm, metric, eval_opts) K is chosen
    first (workflows/autok.py) and what was tried is recorded in the plan's profile as auto_keep."""
    if targets is None:
        return planner(keep)
    from emo_slice.workflows import autok

    keep, record = autok.choose(ckpt, planner, profs, *targets)
    plan = planner(keep)
    plan.profile = {**(plan.profile or {}), "auto_keep": record}
    return plan


def _write(ckpt, plan, out, per_layer: bool, warn, save_dtype, overwrite: bool, max_shard_size, progress) -> dict:
    """Pass on the plan's warnings (and the --per-layer note), then write the slice; returns its manifest."""
    from emo_slice.slicing.extract import extract

    for message in plan.warnings + ([PER_LAYER_NOTE] if per_layer else []):
        if warn is not None:
            warn(message)
    writing = _phase(progress, WRITING)
    return extract(
        ckpt, plan, out, dtype=save_dtype, overwrite=overwrite, max_shard_size=max_shard_size, progress=writing
    )


def _planner(ckpt, profs: list[dict], sources: list[str], experts, method, per_layer, seed, rule):
    """keep -> SlicePlan: composed over the domains when there are several profiles, else plan_slice."""
    from emo_slice.slicing.select import plan_slice

    if len(profs) > 1:
        from emo_slice.slicing.compose import check_composable, compose_plan

        check_composable(profs, method, rule, per_layer)
        return lambda k: compose_plan(ckpt, k, profs, sources, method, rule)
    prof = profs[0] if profs else None
    return lambda k: plan_slice(ckpt, k, experts=experts, profile=prof, method=method, per_layer=per_layer, seed=seed)


def _scores(ckpt, keep, check_keep: bool, profile_paths, settings, experts, per_layer, seed, progress) -> list[dict]:
    """The profiles the plan ranks by: loaded from profile_paths (checked against the model), then made now from
    each settings (after --keep is validated, so nothing long runs on a bad --keep); [] for none."""
    from emo_slice.slicing.profile import profile_model
    from emo_slice.slicing.profile_file import check_profile_matches, load_profile
    from emo_slice.slicing.select import plan_slice

    profs = []
    for path in profile_paths:
        prof = load_profile(path)
        check_profile_matches(prof, ckpt)
        profs.append(prof)
    if experts is None and check_keep:  # validate --keep before running anything long
        plan_slice(ckpt, keep, method="random", per_layer=per_layer, seed=seed)
    for s in settings:
        profs.append(profile_model(ckpt, s, progress=_phase(progress, PROFILING)))
    return profs
