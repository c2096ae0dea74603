"""`emo-slice eval`: score a model (and a second one on the very same items) and write the results files.

`EvalSpec` names the models, the tasks, the settings (`emo_slice.eval.settings.EvalSettings`) and the files;
`run(spec)` checks the paths before any work, holds them locked while scoring (`simple_evaluate`), and writes
the results (lm-evaluation-harness shape) and the per-item predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from emo_slice.eval.settings import EvalSettings
from emo_slice.specs import INPUT, MODEL, OUTPUT, OVERWRITE, Spec, param
from emo_slice.workflows.common import Progress
from emo_slice.workflows.paths import check_spec_paths, local_path

TASK = (
    "Task scored: a built-in benchmark (mmlu, mmlu_stem, arc_easy, hellaswag, ...: `emo-slice tasks` lists them; NAME:mc for "
    "OLMES's lettered format; NAME=FOLDER for a local copy of its data), or a multiple-choice task: a JSONL file, "
    "a saved dataset folder, or hf:NAME[:CONFIG] from the Hugging Face cache. Repeat for several."
)
LM = "Text scored by perplexity and bits per byte: .txt, JSONL, dataset. Repeatable."


@dataclass(frozen=True)
class EvalSpec(Spec):
    """What `emo-slice eval` scores, how, and where it writes."""

    model: str = param(doc=MODEL, flag="MODEL", role=INPUT)
    against: str | None = param(
        None,
        "A second model (e.g. the full one) scored on exactly the same items; the table shows both, the difference "
        "and the share kept.",
        role=INPUT,
    )
    tasks: tuple[str, ...] = param((), TASK, flag="--task")
    lm: tuple[str, ...] = param((), LM)
    gen_tasks: tuple[str, ...] = param(
        (),
        "Generative task: JSONL of {prompt, target, stop (optional list), id (optional)}; greedy, scored by exact "
        "match of the stripped continuation. Repeatable. (--task gsm8k is lm-eval's 8-shot gsm8k_cot.)",
        flag="--gen-task",
        role=INPUT,
    )
    settings: EvalSettings = param(EvalSettings())
    out: str | None = param(None, "Write the results here (JSON, lm-evaluation-harness shape).", role=OUTPUT)
    predictions: str | None = param(None, "Write per-item predictions here (JSONL).", role=OUTPUT)
    overwrite: bool = param(False, OVERWRITE)

    def inputs(self) -> list[tuple[str, str]]:
        tasks = [("--task", p) for p in map(local_path, self.tasks) if p]
        return super().inputs() + tasks + [("--lm", p) for p in map(local_path, self.lm) if p]


def run(spec: EvalSpec, progress: Progress | None = None) -> dict:
    """Score spec.model (and spec.against) and write spec.out / spec.predictions; returns the results dict."""
    from emo_slice.artifacts import locked  # torch-free --help: the library is read when a command runs
    from emo_slice.eval.harness import simple_evaluate
    from emo_slice.eval.results import check_result_paths, save_results

    check_spec_paths(spec)
    check_result_paths([spec.model, spec.against], out=spec.out, predictions=spec.predictions, overwrite=spec.overwrite)
    with locked((spec.out, "--out"), (spec.predictions, "--predictions")):
        data = simple_evaluate(
            spec.model,
            against=spec.against,
            tasks=spec.tasks,
            lm=spec.lm,
            gen_tasks=spec.gen_tasks,
            settings=spec.settings,
            log_samples=spec.predictions is not None,
            progress=progress,
        )
        save_results(data, out=spec.out, predictions=spec.predictions)
    return data


def evaluate_and_save(model: str, *, against=None, out=None, predictions=None, overwrite=False, progress=None, **kw):
    """The keyword form of `run` (earlier versions' eval.harness.evaluate_and_save): simple_evaluate's keywords
    (tasks, lm, gen_tasks and the EvalSettings fields) and the files."""
    files = dict(out=out, predictions=predictions, overwrite=overwrite)
    fields = {k: tuple(kw.pop(k)) for k in ("tasks", "lm", "gen_tasks") if k in kw}
    spec = EvalSpec(model=model, against=against, **fields, settings=replace(EvalSettings(), **kw), **files)
    return run(spec, progress)
