"""Progress that moves: a streamed pass reports every layer (with the tokens its loop pushed), plain lines are
throttled, and the runner owns its token count."""

from __future__ import annotations

import io
import json

import pytest

from emo_slice.eval.harness import simple_evaluate
from emo_slice.progress import LineProgress, progress_text


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    from emo_slice.io.build import random_checkpoint
    from emo_slice.model.presets import preset

    return random_checkpoint(tmp_path_factory.mktemp("deep") / "m", preset("tiny", num_hidden_layers=4), seed=2)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    p = tmp_path_factory.mktemp("task") / "t.jsonl"
    rows = [{"context": f"q {i}", "choices": ["a b", "c d e"], "label": i % 2} for i in range(5)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("layerwise", [True, False])
def test_eval_reports_every_layer(deep, task, layerwise):
    calls = []
    data = simple_evaluate(
        str(deep), tasks=[str(task)], layerwise=layerwise, device="cpu", progress=lambda *a: calls.append(a)
    )
    layers = [c for c in calls if len(c) == 5 and c[4] == "layers"]
    items = [c for c in calls if len(c) < 5]
    tokens = data["models"]["model"]["tokens"]
    assert {c[0] for c in layers} == {"model t layers"}
    if not layerwise:  # resident: one pass per batch, each reporting its layers
        assert len(layers) % 5 == 0 and [c[1] for c in layers[:5]] == [0, 1, 2, 3, 4] and items[-1][1:3] == (5, 5)
        return
    assert [c[1:3] for c in layers] == [(l, 4) for l in range(5)]  # before the first layer, then after each
    assert [c[3] for c in layers] == pytest.approx([tokens * l / 4 for l in range(5)])  # the runner's own count
    assert items[-1][1:4] == (5, 5, tokens) and data["models"]["model"]["placement"] == "streamed"


def test_plain_lines_are_throttled_and_say_layer_tokens_and_time_left():
    now = [0.0]
    out = io.StringIO()
    p = LineProgress(out, every=5.0, quiet=2.0, clock=lambda: now[0])
    for l in range(17):  # one layer a second
        p("eval model code (streamed)", l, 16, 100.0 * l, "layers")
        now[0] += 1.0
    lines = out.getvalue().splitlines()
    assert lines[0] == "eval model code (streamed): layer 2/16, 100 tokens/s, 0:00:02 elapsed, ~0:00:14 left"
    shown = [ln.split(",")[0].split()[-1] for ln in lines]
    assert shown == ["2/16", "7/16", "12/16", "16/16"]  # after the quiet start, every 5 s, and the end
    assert "left" not in lines[-1]
    text = progress_text("writing", 1e9, 4e9, None, "bytes", 3.0)
    assert text == "writing: 1.00 GB/4.00 GB, 0:00:03 elapsed, ~0:00:09 left"


def test_the_first_line_comes_when_the_quiet_start_ends_even_without_a_new_report():
    import time

    out = io.StringIO()
    p = LineProgress(out, every=5.0, quiet=0.2)
    p("eval model code layers", 0, 16, 0.0, "layers")  # then a slow first layer: no report for minutes
    assert out.getvalue() == ""
    time.sleep(0.6)
    assert out.getvalue().startswith("eval model code layers: layer 0/16, ")
