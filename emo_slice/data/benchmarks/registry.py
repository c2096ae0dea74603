"""The built-in benchmarks: one `Benchmark` entry per task or group, keyed by the name `--task` takes.

Every entry mirrors lm-evaluation-harness 0.4.13's task config (dataset path and config, scored split,
few-shot split and sampler, description); entries named `NAME:mc` use OLMES's multiple-choice format
instead (the choices listed in the prompt as " A. ...", the letter scored), as OLMES names them.
`emo-slice tasks` lists this registry, so a task added here is listed there. A generative task (scored by
generation, not ranking) is registered with kind "generative" and `runner` naming the module that scores it.
"""

from __future__ import annotations

from dataclasses import dataclass

MC = "multiple_choice"
GEN = "generative"


@dataclass(frozen=True)
class Benchmark:
    name: str  # the results key (lm-eval's task name; OLMES's for :mc)
    kind: str  # MC | GEN | "group"
    hub: str | None = None  # Hugging Face dataset repo
    config: str | None = None  # its config (lm-eval's dataset_name)
    split: str | None = None  # the scored split
    fewshot_split: str | None = None
    sampler: str = "random"  # lm-eval's few-shot sampler: "random" (its default, per item) or "first_n"
    doc: str = ""  # the converter in formats.CONVERTERS
    choices: str = ""  # number of choices, for the listing
    description: str = ""  # put before the few-shot examples (lm-eval's `description`)
    subset: tuple[str, str, str] | None = None  # (config, field, value): rows of one subject in a shared config
    members: tuple[str, ...] = ()  # groups: the leaf tasks, aggregated as lm-eval does (item-weighted mean)
    groups: tuple[str, ...] = ()  # leaf tasks: the groups they count in
    format: str = "lm-eval"  # "lm-eval" | "olmes-mc"
    runner: str | None = None  # generative tasks: the module that scores them (None: not available yet)
    note: str = ""
    subtask: bool = False  # listed only with `emo-slice tasks --all`


REGISTRY: dict[str, Benchmark] = {}
ALIASES = {"csqa": "commonsense_qa", "mmlu_pro": "mmlu_pro:mc"}


def register(b: Benchmark) -> Benchmark:
    REGISTRY[b.name] = b
    return b


def _mc_variant(b: Benchmark, doc: str, **kw) -> Benchmark:
    """The OLMES multiple-choice variant NAME:mc of an lm-eval task (same data, splits and sampler)."""
    fields = {**b.__dict__, "name": b.name + ":mc", "doc": doc, "format": "olmes-mc", "note": "", **kw}
    return Benchmark(**fields)


def _task(name: str, hub: str, config: str | None, split: str, fewshot: str, doc: str, choices: str, mc=None, **kw):
    b = register(Benchmark(name, MC, hub, config, split, fewshot, doc=doc, choices=choices, **kw))
    if mc:
        register(_mc_variant(b, mc))


_task("arc_easy", "allenai/ai2_arc", "ARC-Easy", "test", "train", "arc", "3-5", mc="arc_mc")
_task("arc_challenge", "allenai/ai2_arc", "ARC-Challenge", "test", "train", "arc", "3-5", mc="arc_mc")
_task("hellaswag", "Rowan/hellaswag", None, "validation", "train", "hellaswag", "4")
_task("piqa", "baber/piqa", None, "validation", "train", "piqa", "2", mc="piqa_mc")
_task(
    "winogrande",
    "allenai/winogrande",
    "winogrande_xl",
    "validation",
    "train",
    "winogrande",
    "2",
    note="partial scoring: each option fills the blank, the rest of the sentence is scored",
)
_task("boolq", "aps/super_glue", "boolq", "validation", "train", "boolq", "2")
_task("openbookqa", "allenai/openbookqa", "main", "test", "train", "openbookqa", "4", mc="openbookqa_mc")
_task("sciq", "allenai/sciq", None, "test", "train", "sciq", "4")
_task("commonsense_qa", "tau/commonsense_qa", None, "validation", "train", "commonsense_qa", "5")

# --- MMLU: 57 subjects in lm-eval's four groups (lm_eval/tasks/mmlu/default) -------------------------------
MMLU_GROUPS = {
    "stem": "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
    "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
    "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
    "high_school_mathematics high_school_physics high_school_statistics machine_learning",
    "other": "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
    "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology",
    "social_sciences": "econometrics high_school_geography high_school_government_and_politics "
    "high_school_macroeconomics high_school_microeconomics high_school_psychology human_sexuality "
    "professional_psychology public_relations security_studies sociology us_foreign_policy",
    "humanities": "formal_logic high_school_european_history high_school_us_history high_school_world_history "
    "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy prehistory "
    "professional_law world_religions",
}
MMLU_SUBJECTS = {s: g for g, names in MMLU_GROUPS.items() for s in names.split()}


def _mmlu(suffix: str, doc: str, fmt: str) -> None:
    for subject, group in MMLU_SUBJECTS.items():
        register(
            Benchmark(
                f"mmlu_{subject}{suffix}",
                MC,
                "cais/mmlu",
                subject,
                "test",
                "dev",
                sampler="first_n",
                doc=doc,
                choices="4",
                description=f"The following are multiple choice questions (with answers) about "
                f"{subject.replace('_', ' ')}.\n\n",
                subset=("all", "subject", subject),
                groups=(f"mmlu_{group}{suffix}", f"mmlu{suffix}"),
                format=fmt,
                subtask=True,
            )
        )
    for group in MMLU_GROUPS:
        members = tuple(f"mmlu_{s}{suffix}" for s, g in MMLU_SUBJECTS.items() if g == group)
        register(Benchmark(f"mmlu_{group}{suffix}", "group", "cais/mmlu", members=members, choices="4", format=fmt))
    everything = tuple(f"mmlu_{s}{suffix}" for s in MMLU_SUBJECTS)
    register(Benchmark(f"mmlu{suffix}", "group", "cais/mmlu", members=everything, choices="4", format=fmt))


_mmlu("", "mmlu", "lm-eval")
_mmlu(":mc", "mmlu_mc", "olmes-mc")

# --- MMLU-Pro: scored as multiple choice (OLMES mmlu_pro:mc), not lm-eval's generative chain of thought -------
MMLU_PRO_CATEGORIES = (
    "biology business chemistry computer_science economics engineering health history law math other "
    "philosophy physics psychology"
).split()
for _cat in MMLU_PRO_CATEGORIES:
    register(
        Benchmark(
            f"mmlu_pro_{_cat}:mc",
            MC,
            "TIGER-Lab/MMLU-Pro",
            None,
            "test",
            "validation",
            sampler="first_n",
            doc="mmlu_pro_mc",
            choices="up to 10",
            description=f"The following are multiple choice questions (with answers) about {_cat.replace('_', ' ')}."
            "\n\n",
            subset=(None, "category", _cat.replace("_", " ")),
            groups=("mmlu_pro:mc",),
            format="olmes-mc",
            subtask=True,
        )
    )
register(
    Benchmark(
        "mmlu_pro:mc",
        "group",
        "TIGER-Lab/MMLU-Pro",
        members=tuple(f"mmlu_pro_{c}:mc" for c in MMLU_PRO_CATEGORIES),
        choices="up to 10",
        format="olmes-mc",
        note="OLMES's multiple-choice form (lm-eval's mmlu_pro is generative chain of thought)",
    )
)

# --- generative: registered here for the listing; scored by their own module ---------------------------------
register(
    Benchmark(
        "gsm8k",
        GEN,
        "openai/gsm8k",
        "main",
        "test",
        None,
        sampler="8 fixed exemplars",
        choices="-",
        runner="emo_slice.eval.generative",  # listed as available when GENERATIVE has it
        note="lm-eval's gsm8k_cot: 8 fixed chain-of-thought exemplars, greedy generation, exact match",
    )
)


GENERATIVE = ("gsm8k",)  # the generative benchmarks scored here (`--task NAME` or `--task NAME=PATH`)


def resolve(name: str) -> Benchmark | None:
    """The entry for a benchmark name (aliases: csqa, mmlu_pro), or None."""
    return REGISTRY.get(ALIASES.get(name, name))


def leaves(b: Benchmark) -> list[Benchmark]:
    """The scored tasks of an entry: itself, or a group's members."""
    return [REGISTRY[m] for m in b.members] if b.kind == "group" else [b]
