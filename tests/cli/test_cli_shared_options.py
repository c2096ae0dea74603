"""Options that profile, sweep and extract share: one definition each, and `calibration()` speaks the library's names."""

import dataclasses
import inspect
from typing import Optional

import typer.main

from emo_slice.cli import app
from emo_slice.cli.options import DType, calibration, opt

GROUP = typer.main.get_command(app)
CALIBRATION_FLAGS = ("--field", "--split", "--shots", "--max-length", "--dtype")


def _param(command: str, flag: str):
    return next(p for p in GROUP.commands[command].params if flag in p.opts)


def test_calibration_keywords_are_the_library_names():
    """Its keys are ProfileSettings fields and make_slice parameters; a settings object built from it equals one built
    keyword by keyword, the --dtype enum passed as its string."""
    from emo_slice.slicing.profile import ProfileSettings
    from emo_slice.workflows.slice import make_slice

    calib = calibration("docs.jsonl", "body", "train", 3, 7, 128, DType.bfloat16)
    assert set(calib) <= {f.name for f in dataclasses.fields(ProfileSettings)}
    assert set(calib) <= set(inspect.signature(make_slice).parameters)
    by_hand = ProfileSettings(
        examples="docs.jsonl", field="body", split="train", shots=3, seed=7, max_length=128, dtype="bfloat16"
    )
    assert ProfileSettings(**calib) == by_hand
    assert calibration(None, "text", None, None, 0, None, None)["dtype"] is None


def test_calibration_options_mean_the_same_in_every_command():
    """--field, --split, --shots, --max-length and --dtype: the same flag, help and default in profile, sweep, extract
    (--dtype's default differs only where a device picks it)."""
    for flag in CALIBRATION_FLAGS:
        params = {c: _param(c, flag) for c in ("profile", "sweep", "extract")}
        helps = {c: p.help for c, p in params.items() if not (flag == "--dtype" and c == "profile")}
        assert len(set(helps.values())) == 1, (flag, helps)
        assert len({p.default for p in params.values()}) == 1, flag
    assert _param("profile", "--examples").help == _param("sweep", "--examples").help


def test_opt_hides_the_default_unless_asked():
    """Options declared with `opt` show no default in --help, except where the command asks (--controls, --per-layer)."""
    assert _param("sweep", "--controls").show_default is True and _param("extract", "--per-layer").show_default is True
    assert _param("sweep", "--limit").show_default is False and _param("extract", "--target").show_default is False
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
