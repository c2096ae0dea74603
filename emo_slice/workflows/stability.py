"""`emo-slice stability`: is one few-shot example enough? The kept set chosen from N calibration examples
against the one chosen from the most, per layer, and across seeds (analysis.stability)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from emo_slice.errors import UsageError
from emo_slice.specs import DEVICE, DTYPE, INPUT, KEEP, LAYERWISE, MAX_LENGTH, MODEL, OUTPUT, OVERWRITE, Spec, param
from emo_slice.workflows.paths import check_spec_paths

EXAMPLES = (
    "Calibration input: documents (.txt, JSONL --field, a dataset), or with --multiple-choice a task file (one "
    "item = one example)."
)


@dataclass(frozen=True)
class StabilitySpec(Spec):
    """What `emo-slice stability` does."""

    model: str = param(doc=MODEL, flag="MODEL", role=INPUT)
    examples: str = param(doc=EXAMPLES, role=INPUT)
    keep: str = param(doc=KEEP)
    calib_n: str = param("1,5,10,100", "Numbers of examples to compare, comma-separated; the largest is the reference.")
    seeds: int = param(3, "Seeded orders of the examples (seed 0, 1, ...); each N takes the first N of each.")
    method: str = param("mean-prob", "How experts are ranked: mean-prob (EMO's default) or frequency.")
    multiple_choice: bool = param(False, "Read --examples as a multiple-choice task: one item (with its gold answer) "
                                  "is one example.")  # fmt: skip
    field: str = param("text", "Field holding the text in JSONL records / datasets.")
    split: str | None = param(None, "Dataset split (default: test, validation or train).")
    max_length: int | None = param(None, MAX_LENGTH)
    dtype: str | None = param(None, DTYPE)
    device: str = param("auto", DEVICE)
    layerwise: bool = param(False, LAYERWISE)
    out: str | None = param(None, "JSON report to write (kept sets and Jaccard per layer).", role=OUTPUT)
    overwrite: bool = param(False, OVERWRITE)


def examples_of(spec: StabilitySpec) -> tuple[list[str], dict]:
    """The calibration examples: documents, or one-item prompts of a multiple-choice task (gold appended)."""
    from emo_slice.data.sources import fewshot_prompt, file_hash, read_texts  # torch-free --help

    desc = {"source": spec.examples, "file_hash": file_hash(spec.examples) if Path(spec.examples).is_file() else None}
    if spec.multiple_choice:
        from emo_slice.data.tasks import load_items

        items, fmt = load_items(spec.examples, None, "auto", spec.split)
        return [fewshot_prompt([it]) for it in items], desc | {"kind": "multiple-choice", "format": fmt}
    texts = read_texts(spec.examples, spec.field, spec.split, "--examples")
    return texts, desc | {"kind": "text", "field": spec.field, "split": spec.split}


def run_stability(spec: StabilitySpec, progress: Callable[[int, int], None] | None = None) -> dict:
    """Collect per-example router statistics once, compare the kept sets; write spec.out (JSON) if given."""
    from emo_slice.analysis import stability  # torch-free --help: the heavy modules load when the command runs
    from emo_slice.artifacts import atomic_write_text, check_output, output_lock, provenance
    from emo_slice.io.checkpoint import Checkpoint
    from emo_slice.slicing.profile import ProfileSettings
    from emo_slice.slicing.select import parse_keep

    sizes = stability.parse_sizes(spec.calib_n)
    if spec.seeds < 1:
        raise UsageError(f"--seeds {spec.seeds} must be at least 1")
    if spec.method not in stability.METHODS:
        raise UsageError(f"--method {spec.method!r}: stability ranks by {' or '.join(stability.METHODS)}")
    ckpt = Checkpoint(spec.model)
    cfg = ckpt.config
    E_min = min(cfg.experts_in_layer(l) for l in range(cfg.num_hidden_layers))
    keep_routed = parse_keep(spec.keep, E_min, cfg.num_shared_experts) - cfg.num_shared_experts
    check_spec_paths(spec)  # no output on, in or around an input
    if spec.out is not None:
        check_output(spec.out, inputs=[ckpt.path, spec.examples], overwrite=spec.overwrite, kind="stability")
    texts, inputs = examples_of(spec)
    settings = ProfileSettings(
        examples=spec.examples,
        max_length=spec.max_length,
        dtype=spec.dtype,
        device=spec.device,
        layerwise=spec.layerwise,
    )
    with output_lock(spec.out) if spec.out is not None else contextlib.nullcontext():
        stats = stability.collect(spec.model, texts, settings, progress)
        result = stability.compare(stats, sizes, spec.seeds, keep_routed, spec.method)
        report = {
            "format": "emo-slice-stability",
            "model": {"path": str(ckpt.path.resolve()), "fingerprint": ckpt.fingerprint()},
            "inputs": inputs | {"examples": len(texts), "tokens": int(stats.tokens_X.sum())},
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(spec).items()}
            | {"keep_routed": keep_routed, "calib_n": sizes},
            **result,
            "provenance": provenance(),
        }
        if spec.out is not None:
            atomic_write_text(spec.out, json.dumps(report, indent=1) + "\n")
    return report
