"""Profile a model end to end, one call: what `emo-slice profile` runs.

- `write_profile(model, out, settings)`: check the output, profile the model layer by layer, save the
  profile file (atomically); `profile_summary` is the short result (`profile --json`).

It refuses an output inside the model folder, or an existing one without overwrite, before any work.
Progress is one callback, `progress(label, done, total)`, with the label "profiling" (layers).
"""

from __future__ import annotations

import os
from pathlib import Path

from emo_slice.errors import UsageError
from emo_slice.workflows.common import PROFILING, Progress
from emo_slice.workflows.common import phase as _phase


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
