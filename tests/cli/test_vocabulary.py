"""One command-line vocabulary: walking every command's parameters, a flag means one thing everywhere, a command
that runs a model takes the device options, outputs are --out, and every option's help and default come from
the field of the spec the command fills (one source of truth)."""

import dataclasses
from typing import Optional

import pytest
import typer.main
from conftest import assert_one_line_error, invoke

from emo_slice import specs
from emo_slice.analysis.settings import CaptureSettings, ClusterSettings
from emo_slice.cli import app
from emo_slice.cli.options import MODEL_OPTIONS, VOCABULARY, opt
from emo_slice.eval.settings import EvalSettings
from emo_slice.slicing.profile_settings import ProfileSettings
from emo_slice.workflows.autok import AutoKSpec
from emo_slice.workflows.demo_data import DemoDataSpec
from emo_slice.workflows.eval import EvalSpec
from emo_slice.workflows.export import ExportSpec
from emo_slice.workflows.finetune import FinetuneSpec
from emo_slice.workflows.generate import GenerateSettings, GenerateSpec
from emo_slice.workflows.info import InfoSpec
from emo_slice.workflows.init import InitSpec
from emo_slice.workflows.map import MapSpec
from emo_slice.workflows.merge import MergeSpec
from emo_slice.workflows.pretrain import PretrainSpec
from emo_slice.workflows.profile import ProfileSpec
from emo_slice.workflows.quickstart import QuickstartSpec
from emo_slice.workflows.slice import SliceSpec
from emo_slice.workflows.stability import StabilitySpec
from emo_slice.workflows.sweep import SweepSpec

GROUP = typer.main.get_command(app)
# each command and the specs its options fill (in order: a parameter is the first spec field of its name)
SPECS = {
    "info": (InfoSpec,),
    "init": (InitSpec,),
    "demo-data": (DemoDataSpec,),
    "profile": (ProfileSpec, ProfileSettings),
    "extract": (SliceSpec, ProfileSettings, AutoKSpec, EvalSettings),
    "export": (ExportSpec,),
    "eval": (EvalSpec, EvalSettings),
    "sweep": (SweepSpec, ProfileSettings, EvalSettings),
    "generate": (GenerateSpec, GenerateSettings),
    "pretrain": (PretrainSpec,),
    "finetune": (FinetuneSpec,),
    "merge": (MergeSpec,),
    "quickstart": (QuickstartSpec,),
    "tasks": (),
    "map": (MapSpec, CaptureSettings, ClusterSettings),
    "stability": (StabilitySpec,),
}
CLI_ONLY = {"json_out", "per_subtask", "dry_run", "show_config", "all_tasks"}  # how results are shown
RENAMED = {
    ("sweep", "eval_shots"): (EvalSettings, "shots")
}  # sweep's --shots is the calibration's; the scoring's is --eval-shots


def params(command: str):
    return [p for p in GROUP.commands[command].params if not p.hidden]


def test_every_command_is_described():
    assert set(SPECS) == set(GROUP.commands)


def test_a_flag_means_one_thing_everywhere():
    uses: dict[str, list] = {}
    for name in GROUP.commands:
        for p in params(name):
            for flag in (o for o in p.opts if o.startswith("--")):
                uses.setdefault(flag, []).append((name, p.help or ""))
    shared = {f for f, u in uses.items() if len({n for n, _ in u}) > 1}
    assert shared - {"--out"} <= set(VOCABULARY), sorted(shared - set(VOCABULARY))  # a new shared flag is declared
    wrong = [(f, n, h[:60]) for f in VOCABULARY for n, h in uses.get(f, []) if not h.startswith(VOCABULARY[f])]
    assert not wrong, wrong


def test_commands_that_run_a_model_take_the_device_options():
    for name, flags in MODEL_OPTIONS.items():
        have = {f for p in params(name) for f in p.opts}
        assert set(flags) <= have, (name, set(flags) - have)
        assert "--device" in have and "--dtype" in have and "--pool" in have
    for flag in ("--device", "--layerwise"):  # and where one is taken, it is the shared definition
        helps = {p.help for n in GROUP.commands for p in params(n) if flag in p.opts}
        assert len(helps) == 1, (flag, helps)


def test_outputs_are_out_and_declared_as_outputs():
    """Every command that writes takes --out (a deprecated positional may remain hidden), and each output option
    is a field the spec declares as an output (the guard sees it)."""
    for name, spec_classes in SPECS.items():
        outputs = {f.name for s in spec_classes for f in dataclasses.fields(s) if f.metadata.get("role") == "output"}
        flags = {p.name: p.opts for p in params(name)}
        if outputs:
            assert "out" in outputs and flags["out"] == ["--out"], name
        for field in outputs:
            assert field in flags, (name, field)


def _field(command: str, param: str):
    if (command, param) in RENAMED:
        spec, name = RENAMED[command, param]
        return spec, next(f for f in dataclasses.fields(spec) if f.name == name)
    for spec in SPECS[command]:
        for f in dataclasses.fields(spec):
            if f.name == param:
                return spec, f
    return None, None


@pytest.mark.parametrize("command", sorted(set(SPECS) - {"tasks", "pretrain", "finetune"}))
def test_help_and_defaults_come_from_the_spec_fields(command):
    """Each option's help is its spec field's doc and its default the field's (pretrain: TrainConfig's docs,
    checked below); a required field may be optional on the command line only to say what is missing."""
    for p in GROUP.commands[command].params:
        if p.name in CLI_ONLY or p.hidden:
            continue
        spec, f = _field(command, p.name)
        assert f is not None, (command, p.name)
        assert p.help == f.metadata["doc"], (command, p.name)
        default = specs.default(spec, f.name)
        shown = (
            [x.value if hasattr(x, "value") else x for x in p.default]
            if isinstance(p.default, (list, tuple))
            else p.default
        )
        shown = getattr(shown, "value", shown)
        if default is dataclasses.MISSING or default == "":  # required (ProfileSettings.examples: "" is not given)
            assert p.required or shown is None, (command, p.name)
        elif isinstance(default, tuple):
            assert list(default) == list(shown or []), (command, p.name)
        elif default != shown:
            assert isinstance(default, str) and str(shown) == default, (command, p.name, default, shown)


def test_pretrain_help_is_train_configs_field_docs():
    from emo_slice.workflows.pretrain import OPTION_FIELDS

    docs = specs.attribute_docs("emo_slice.train.config_fields", "TrainConfig")
    for p in GROUP.commands["pretrain"].params:
        if p.name in OPTION_FIELDS:
            assert p.help == docs[p.name] and p.default is None, p.name


def test_finetune_help_is_finetune_configs_field_docs():
    from emo_slice.workflows.finetune import OPTION_FIELDS

    docs = specs.attribute_docs("emo_slice.train.finetune_config", "FinetuneConfig")
    for p in GROUP.commands["finetune"].params:
        if p.name in OPTION_FIELDS:
            assert p.help == docs[p.name] and p.default is None, p.name
        elif p.name not in CLI_ONLY:
            f = next(f for f in dataclasses.fields(FinetuneSpec) if f.name == p.name)
            assert p.help == f.metadata["doc"], p.name


def test_generate_greedy_is_the_default_and_the_old_flag_warns(tiny_ckpt):
    """--greedy is profile/extract's layer-by-layer selection; generate decodes greedily by default, --sample
    samples, and its old --greedy still works for a release with a warning line."""
    r = invoke("generate", tiny_ckpt, "--prompt", "ab", "--max-new-tokens", "3", "--greedy", "--json")
    assert r.returncode == 0 and r.stderr.startswith("warning: generate --greedy is deprecated"), r.stderr
    import json

    plain = invoke("generate", tiny_ckpt, "--prompt", "ab", "--max-new-tokens", "3", "--json")
    assert json.loads(r.stdout)["completions"] == json.loads(plain.stdout)["completions"]
    assert json.loads(plain.stdout)["settings"]["sample"] is False


def test_the_old_positional_output_still_works_with_a_warning(tmp_path):
    r = invoke("init", tmp_path / "m", "--preset", "tiny")
    assert r.returncode == 0 and r.stderr.startswith("warning: the output as a positional argument is deprecated")
    assert (tmp_path / "m" / "config.json").is_file()
    assert_one_line_error(invoke("init", tmp_path / "n", "--out", tmp_path / "o"), "given twice")
    assert_one_line_error(invoke("demo-data"), "--out is required")
    assert not (tmp_path / "n").exists() and not (tmp_path / "o").exists()


def test_library_errors_name_parameters_and_the_cli_shows_flags(tiny_ckpt, tmp_path):
    from emo_slice.errors import UsageError
    from emo_slice.workflows.generate import complete

    with pytest.raises(UsageError, match=r"^`max_new_tokens=0` must be at least 1$"):
        complete({"model": str(tiny_ckpt)}, ["a"], max_new_tokens=0)
    r = invoke("generate", tiny_ckpt, "--prompt", "a", "--max-new-tokens", "0")
    assert_one_line_error(r, "--max-new-tokens 0 must be at least 1")
    r = invoke(
        "extract",
        tiny_ckpt,
        "--keep",
        "auto",
        "--target",
        "0.9",
        "--target-mass",
        "0.9",
        "--examples",
        "x.txt",
        "--out",
        tmp_path / "s",
    )
    assert_one_line_error(r, "--keep auto needs one of --target SHARE")


def test_opt_hides_the_default_unless_asked():
    """Options only the command line has (how results are shown) show no default unless asked."""
    mini = typer.Typer()

    @mini.command()
    def count(
        n: opt("--n", Optional[int], "How many.") = None, dry: opt("--dry", bool, "Dry.", show_default=True) = False
    ):
        pass

    params = {p.name: p for p in typer.main.get_command(mini).params}
    n, dry = params["n"], params["dry"]
    assert (n.opts, n.help, n.show_default, n.default) == (["--n"], "How many.", False, None)
    assert (dry.opts, dry.show_default, dry.is_flag) == (["--dry"], True, True)
