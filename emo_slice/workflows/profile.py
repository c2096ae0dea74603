"""`emo-slice profile`: score every routed expert on calibration input and write a reusable profile file.

- `run(ProfileSpec(model, settings, out))`: check the device, the paths and the output, profile the model
  layer by layer (`emo_slice.slicing.profile.profile_model`), save the profile file (atomically); returns
  (profile, path). `write_profile(model, out, settings)` is its keyword form.
- `profile_summary` is the short result (`profile --json`).

It refuses an output inside the model folder, or an existing one without overwrite, before any work.
Progress is one callback, `progress(label, done, total)`, with the label "profiling" (layers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from emo_slice.errors import UsageError
from emo_slice.slicing.profile_settings import ProfileSettings
from emo_slice.specs import INPUT, MODEL, OUTPUT, OVERWRITE, Spec, param
from emo_slice.workflows.common import PROFILING, Progress, phase
from emo_slice.workflows.paths import check_spec_paths


@dataclass(frozen=True)
class ProfileSpec(Spec):
    """The model `emo-slice profile` runs, how (ProfileSettings), and the file it writes."""

    model: str = param(doc=MODEL, flag="MODEL", role=INPUT)
    settings: ProfileSettings = param(doc="Calibration input and how to run it.")
    out: str | None = param(
        None, "Profile file to write (JSON). Default: MODELNAME.profile.json in the current folder.", role=OUTPUT
    )
    overwrite: bool = param(False, OVERWRITE)

    def outputs(self) -> list[tuple[str, str]]:
        return [("--out", str(self.out if self.out is not None else default_profile_path(self.model)))]


def default_profile_path(model_folder: str | os.PathLike) -> Path:
    """MODELNAME.profile.json in the current folder."""
    return Path(f"{Path(model_folder).resolve().name}.profile.json")


def run(spec: ProfileSpec, progress: Progress | None = None) -> tuple[dict, Path]:
    """Profile spec.model with spec.settings and save the profile; returns (profile, path)."""
    from emo_slice.artifacts import check_output, output_lock  # torch-free --help: torch loads when it runs
    from emo_slice.io.checkpoint import Checkpoint
    from emo_slice.model.devices import resolve_device
    from emo_slice.slicing.profile import profile_model
    from emo_slice.slicing.profile_file import save_profile

    settings = spec.settings
    if not settings.examples:
        raise UsageError("`examples` is required: the calibration input to profile on")
    resolve_device(settings.device)  # a bad device: refused before anything is read
    if settings.keep is not None and not settings.greedy:
        raise UsageError("`keep` only applies with `greedy` (a one-pass profile serves any K); drop it or add `greedy`")
    check_spec_paths(spec)
    ckpt = Checkpoint(spec.model)
    out = spec.outputs()[0][1] if spec.out is not None else default_profile_path(ckpt.path)
    check_output(out, inputs=[ckpt.path], overwrite=spec.overwrite, kind="profile")
    with output_lock(out):  # held while profiling: a second writer of the same file refuses
        prof = profile_model(ckpt, settings, progress=phase(progress, PROFILING))
        return prof, save_profile(prof, out)


def write_profile(
    model, out: str | os.PathLike | None, settings: ProfileSettings, *, overwrite: bool = False, progress=None
) -> tuple[dict, Path]:
    """The keyword form of `run`: profile `model` (folder or Hub id) with `settings` and save it to `out`
    (default MODELNAME.profile.json); returns (profile, path)."""
    spec = ProfileSpec(str(getattr(model, "path", model)), settings, None if out is None else str(out), overwrite)
    return run(spec, progress)


def profile_summary(profile: dict, path: str | os.PathLike) -> dict:
    """The short result of a profile run: file, tokens, model fingerprint, greedy settings, concentration."""
    from emo_slice.slicing.profile_file import concentration  # torch-free --help

    return {
        "profile": str(path),
        "tokens": profile["tokens"],
        "layers": len(profile["layers"]),
        "fingerprint": profile["model"]["fingerprint"],
        "tokenizer": profile["inputs"].get("tokenizer"),
        "greedy": profile["greedy"],
        "concentration": concentration(profile),
    }
