"""examples/finetune_merge.py runs end to end on a tiny quickstart-shaped folder and ends with one JSON line whose
figures are the models' own (the untouched domains of a merge that changes nothing stay equal)."""

import json
import random
from pathlib import Path

import pytest
from conftest import load_example

DOMAINS = ("code", "docs", "unicode", "arithmetic")


def _quickstart(root: Path) -> Path:
    """data/ (train.jsonl, tasks/, valid/) and two random tiny models, emo/final and standard/final."""
    from emo_slice.io.build import random_checkpoint

    rng = random.Random(0)
    data = root / "data"
    (data / "tasks").mkdir(parents=True)
    (data / "valid").mkdir()
    docs = []
    for d in DOMAINS:
        for i in range(6):
            lines = [f"{d} line {j} {rng.randint(0, 99)}" for j in range(8)]
            docs.append({"id": f"{d}/{i}", "domain": d, "text": "\n".join(lines)})
    (data / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
    for d in DOMAINS:
        (data / "valid" / f"{d}.jsonl").write_text(json.dumps({"text": f"{d} held out text " * 5}) + "\n")
        item = {"context": f"{d} a\n", "choices": ["x", "y", "z", "w"], "label": 0}
        (data / "tasks" / f"{d}.jsonl").write_text("".join(json.dumps({**item, "id": str(i)}) + "\n" for i in range(4)))
    for r, seed in (("emo", 0), ("standard", 1)):
        random_checkpoint(root / r / "final", "tiny", seed=seed)
    return root


@pytest.mark.slow
def test_runs_and_ends_with_one_json_line(tmp_path, capsys):
    qs = _quickstart(tmp_path / "qs")
    args = ["--quickstart", str(qs), "--out", str(tmp_path / "out"), "--items", "12", "--epochs", "1"]
    load_example("finetune_merge").main(args + ["--keep", "4", "--batch-size", "4", "--device", "cpu"])
    out = capsys.readouterr().out.strip().splitlines()
    data = json.loads(out[-1])
    for r in ("emo", "standard"):
        res = data["results"][r]
        assert set(res["full_before"]) == set(DOMAINS) and res["steps"] == 3
        assert res["slice_before"] != res["slice_after"]  # the slice learned
    assert out[0].startswith("| | EMO | standard |")
