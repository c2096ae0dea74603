"""`emo-slice extract`: write a checkpoint holding K experts per layer, one call over one `SliceSpec`.

`run(spec)` validates every input (the choice of experts, dtypes, sizes, the paths and the output folder,
the profiles, K) before any long work, profiles on `examples` if asked, plans, and extracts. Several
profiles / examples compose one slice (slicing/compose.py); keep="auto" picks K first (workflows/autok.py:
a score target on held-out items, or a routing-mass target from the profile). `make_slice(model, out,
**keywords)` is its keyword form.

It refuses an output on or around an input, or an existing one without overwrite, before any work.
Progress is one callback, `progress(label, done, total)`, with labels "profiling" (layers) and "writing
slice" (bytes); `warn(message)` receives what the caller should show as a warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable

from emo_slice.errors import UsageError
from emo_slice.eval.settings import EvalSettings
from emo_slice.slicing.profile_settings import EXAMPLES, ProfileSettings
from emo_slice.specs import INPUT, KEEP, METHOD, OUTPUT, OVERWRITE, RESCALE, Spec, param
from emo_slice.workflows import autok
from emo_slice.workflows.autok import AutoKSpec
from emo_slice.workflows.common import PROFILING, WRITING, Progress, phase
from emo_slice.workflows.paths import check_spec_paths, local_path

PER_LAYER_NOTE = (
    "--per-layer writes num_experts_per_layer, which only EMO's own model code reads (not vLLM or other runtimes)"
)
COMPOSE = (
    "With several domains: union (round robin over the domains' rankings; the default) or sum (of each domain's "
    "scores divided by their layer total)."
)


@dataclass(frozen=True)
class SliceSpec(Spec):
    """The slice `emo-slice extract` writes: the source, K, how the experts are chosen, and how it is stored."""

    model: str = param(doc="Checkpoint folder or Hub id to slice (never modified).", flag="MODEL", role=INPUT)
    out: str = param(doc="Folder for the sliced checkpoint (absent or empty, and outside the source).", role=OUTPUT)
    keep: str | None = param(None, KEEP + " auto: the smallest K meeting --target or --target-mass.")
    profiles: tuple[str, ...] = param(
        (), "Profile file from `emo-slice profile`; once per domain to compose a slice.", flag="--profile", role=INPUT
    )
    examples: tuple[str, ...] = param((), EXAMPLES + " Profiled now; once per domain to compose a slice.", role=INPUT)
    experts: str | None = param(
        None, "Routed experts to keep by hand: '1,3,4,6' in every layer, or one list per layer separated by ';'."
    )
    method: str = param("mean-prob", METHOD)
    compose: str | None = param(None, COMPOSE)
    rescale: str = param("auto", RESCALE)
    per_layer: bool = param(
        False,
        "Rank experts across layers (different K per layer, written as num_experts_per_layer): EMO's own model code "
        "only.",
    )
    calibration: ProfileSettings = param(ProfileSettings(), "How --examples are profiled (and the --seed).")
    auto: AutoKSpec = param(AutoKSpec(), "How --keep auto picks K.")
    save_dtype: str | None = param(
        None, "Stored dtype of the written weights (default: unchanged, bytes copied verbatim)."
    )
    max_shard_size: str | int = param("5GB", "Largest weight file, e.g. 500MB, 5GB.")
    overwrite: bool = param(False, OVERWRITE)

    def inputs(self) -> list[tuple[str, str]]:
        tasks = [("--task", p) for p in map(local_path, self.auto.tasks) if p]
        return super().inputs() + tasks + [("--lm", p) for p in self.auto.lm]


def run(spec: SliceSpec, progress: Progress | None = None, warn: Callable[[str], None] | None = None) -> dict:
    """Write spec's slice; returns its manifest (slice.json)."""
    from emo_slice.artifacts import output_lock  # torch-free --help: torch loads when the command runs

    profiles, examples, calib = list(spec.profiles), list(spec.examples), spec.calibration
    if _auto(spec) and spec.auto.target is not None and not (profiles or examples or spec.experts) and spec.auto.tasks:
        examples = [spec.auto.tasks[0]]  # calibrate on the task; those items are held out of the scoring
        calib = replace(calib, shots=calib.shots or 5)
    _check_choice(spec, bool(profiles), bool(examples))
    _check_compose(spec, len(profiles) + len(examples))
    auto = _check_auto(spec)
    check_spec_paths(spec)
    ckpt = _check_output(spec)
    settings = [
        replace(calib, examples=src, keep=spec.keep if calib.greedy else None, method=spec.method) for src in examples
    ]
    with output_lock(spec.out):  # held from here to the end: a second writer of the same folder refuses
        profs = _scores(ckpt, spec, not auto, profiles, settings, progress)
        planner = _planner(ckpt, profs, profiles + examples, spec)
        plan = _plan(ckpt, planner, profs, spec.keep, spec.auto if auto else None)
        return _write(ckpt, plan, spec, warn, progress)


def _auto(spec: SliceSpec) -> bool:
    return spec.keep is not None and str(spec.keep).strip().lower() == "auto"


def _check_choice(spec: SliceSpec, profiles: bool, examples: bool) -> None:
    """Exactly one way to choose the experts (or method random), a known method, options that apply."""
    from emo_slice.slicing.select import METHODS  # torch-free --help

    given = [f"`{n}`" for n, v in (("profiles", profiles), ("examples", examples), ("experts", spec.experts)) if v]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} both choose the experts; give only one of them")
    if not given and spec.method != "random":
        raise UsageError(
            "say how to choose the experts: `profiles` FILE, `examples` SRC, `experts` LIST, or `method=random`"
        )
    if spec.method not in METHODS:
        raise UsageError(f"`method={spec.method!r}` is unknown; choose one of {', '.join(METHODS)}")
    if spec.calibration.greedy and not examples:
        raise UsageError(
            "`greedy` applies with `examples` (or make a greedy profile with `emo-slice profile --greedy`)"
        )
    if spec.calibration.dtype is not None and not examples and not _auto(spec):
        raise UsageError(
            f"`dtype={spec.calibration.dtype}` is the compute dtype of profiling `examples` (and of scoring with "
            "`keep=auto`), and nothing runs here; to store the slice in another dtype pass `save_dtype`"
        )


def _check_compose(spec: SliceSpec, n_domains: int) -> None:
    """Several domains need a rule (union by default), and one-pass profiles."""
    from emo_slice.slicing.compose import RULES, check_composable  # torch-free --help

    if spec.compose is not None and spec.compose not in RULES:
        raise UsageError(f"`compose={spec.compose!r}` is unknown; choose one of {', '.join(RULES)}")
    if spec.compose is not None and n_domains < 2:
        raise UsageError("`compose` combines several domains: give `profiles` (or `examples`) once per domain")
    if n_domains > 1 and spec.calibration.greedy:
        raise UsageError("`greedy` slices for one input; compose one-pass profiles instead")
    if n_domains > 1:
        check_composable([], spec.method, spec.compose or "union", spec.per_layer)


def _check_auto(spec: SliceSpec) -> bool:
    """Whether K is chosen automatically (keep auto); it needs exactly one target, and scores."""
    a = spec.auto
    if not _auto(spec):
        if a.target is not None or a.target_mass is not None:
            raise UsageError("`target` and `target_mass` choose K: use them with `keep=auto`")
        return False
    autok.check_target(a.target, "target")
    autok.check_target(a.target_mass, "target_mass")
    if (a.target is None) == (a.target_mass is None):
        raise UsageError("`keep=auto` needs one of `target=SHARE` (scored on `tasks`) or `target_mass=SHARE` (free)")
    if a.target is not None and not a.tasks and not a.lm:
        raise UsageError("`keep=auto` `target` scores slices: give the `tasks` (or `lm`) to keep the score on")
    if spec.experts is not None or spec.method == "random" or spec.calibration.greedy:
        raise UsageError(
            "`keep=auto` ranks experts by scores: use `profiles` or `examples` (not `experts`, `method=random` or "
            "`greedy`)"
        )
    return True


def _check_output(spec: SliceSpec):
    """The dtypes, the shard size and the output folder, checked before any work; returns the Checkpoint."""
    from emo_slice.artifacts import check_output, parse_size  # torch-free --help
    from emo_slice.io.checkpoint import Checkpoint, parse_dtype
    from emo_slice.slicing.extract import copied_files

    parse_dtype(spec.save_dtype, "`save_dtype`")
    parse_dtype(spec.calibration.dtype, "`dtype`")
    parse_size(spec.max_shard_size)
    ckpt = Checkpoint(spec.model)
    check_output(spec.out, inputs=[ckpt.path], overwrite=spec.overwrite, folder=True)
    copied_files(ckpt.path)  # refuses a link out of the folder before any work
    return ckpt


def _plan(ckpt, planner, profs: list[dict], keep, auto: AutoKSpec | None):
    """planner(keep); with auto (keep auto) K is chosen first (workflows/autok.py) and what was tried is
    recorded in the plan's profile as auto_keep."""
    if auto is None:
        return planner(keep)
    keep, record = autok.choose(ckpt, planner, profs, auto)
    plan = planner(keep)
    plan.profile = {**(plan.profile or {}), "auto_keep": record}
    return plan


def _write(ckpt, plan, spec: SliceSpec, warn, progress) -> dict:
    """Pass on the plan's warnings (and the --per-layer note), then write the slice; returns its manifest."""
    from emo_slice.slicing.extract import extract  # torch-free --help

    for message in plan.warnings + ([PER_LAYER_NOTE] if spec.per_layer else []):
        if warn is not None:
            warn(message)
    return extract(
        ckpt,
        plan,
        spec.out,
        dtype=spec.save_dtype,
        overwrite=spec.overwrite,
        max_shard_size=spec.max_shard_size,
        progress=phase(progress, WRITING),
    )


def _planner(ckpt, profs: list[dict], sources: list[str], spec: SliceSpec):
    """keep -> SlicePlan: composed over the domains when there are several profiles, else plan_slice."""
    from emo_slice.slicing.compose import check_composable, compose_plan  # torch-free --help
    from emo_slice.slicing.rescale import rescale
    from emo_slice.slicing.select import plan_slice

    method, per_layer, rule = spec.method, spec.per_layer, spec.compose or "union"

    def scaled(plan):
        return rescale(plan, ckpt.config, profs, spec.rescale)

    if len(profs) > 1:
        check_composable(profs, method, rule, per_layer)
        return lambda k: scaled(compose_plan(ckpt, k, profs, [str(s) for s in sources], method, rule))
    prof = profs[0] if profs else None
    seed = spec.calibration.seed
    return lambda k: scaled(
        plan_slice(ckpt, k, experts=spec.experts, profile=prof, method=method, per_layer=per_layer, seed=seed)
    )


def _scores(ckpt, spec: SliceSpec, check_keep: bool, profile_paths, settings, progress) -> list[dict]:
    """The profiles the plan ranks by: loaded from profile_paths (checked against the model), then made now from
    each settings (after keep is validated, so nothing long runs on a bad keep); [] for none."""
    from emo_slice.slicing.profile import profile_model  # torch-free --help
    from emo_slice.slicing.profile_file import check_profile_matches, load_profile
    from emo_slice.slicing.select import plan_slice

    profs = []
    for path in profile_paths:
        prof = load_profile(path)
        check_profile_matches(prof, ckpt)
        profs.append(prof)
    if spec.experts is None and check_keep:  # validate keep before running anything long
        plan_slice(ckpt, spec.keep, method="random", per_layer=spec.per_layer, seed=spec.calibration.seed)
    for s in settings:
        profs.append(profile_model(ckpt, s, progress=phase(progress, PROFILING)))
    return profs


# ---- the keyword form ---------------------------------------------------------------------------------

_CALIBRATION = ("field", "split", "shots", "seed", "max_length", "dtype", "greedy", "device", "layerwise", "pool")
_AUTO = ("target", "target_mass", "tasks", "lm", "metric")


def make_slice(model, out: str | os.PathLike, *, progress: Progress | None = None, warn=None, **options) -> dict:
    """The keyword form of `run` (earlier versions' signature): SliceSpec's fields, the calibration's (field,
    split, shots, seed, max_length, dtype, greedy, device, layerwise, pool) and auto-K's (target, target_mass,
    tasks, lm, metric) as keywords; `profile_path` (one path or several) for `profiles`; `eval_opts` (a dict of
    EvalSettings fields) for the scoring of keep="auto"."""
    calib = {k: options.pop(k) for k in _CALIBRATION if k in options}
    auto = {
        k: tuple(options.pop(k) or ()) if k in ("tasks", "lm", "metric") else options.pop(k)
        for k in _AUTO
        if k in options
    }
    scoring = {k: v for k, v in (options.pop("eval_opts", None) or {}).items() if v is not None}
    for old, new in (("profile_path", "profiles"), ("examples", "examples")):
        if old in options:
            value = options.pop(old)
            options[new] = tuple(map(str, [value] if isinstance(value, (str, os.PathLike)) else value or ()))
    spec = SliceSpec(
        model=str(getattr(model, "path", model)),
        out=str(out),
        calibration=replace(ProfileSettings(), **calib),
        auto=AutoKSpec(**auto, scoring=replace(EvalSettings(), **scoring)),
        **options,
    )
    return run(spec, progress, warn)
