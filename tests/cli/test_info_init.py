"""`emo-slice info` / `init` through the real command line."""

import json

from conftest import assert_one_line_error, invoke, run_cli

import emo_slice
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.workflows.info import param_counts


def test_info_json_counts(fixtures):
    proc = run_cli("info", fixtures / "emo-tiny", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    ckpt = Checkpoint(fixtures / "emo-tiny")
    total = sum(i.nbytes for i in ckpt.infos.values()) // 4
    assert data["parameters"]["total"] == total  # float32: bytes / 4
    cfg = ckpt.config
    expert = 3 * cfg.hidden_size * cfg.intermediate_size
    assert data["parameters"]["total"] - data["parameters"]["active"] == 2 * (9 - 3) * expert
    assert data["experts"]["per_layer"] == [9, 9] and data["experts"]["shared"] == 1
    assert data["bytes_on_disk"] == ckpt.total_bytes
    half = data["slices"][0]
    sliced = param_counts(cfg, [half["keep"]] * 2)["total"]
    assert half["bytes"] == sliced * 4


def test_info_table_and_init(tmp_path):
    proc = invoke("init", "--out", tmp_path / "m", "--preset", "tiny", "--max-shard-size", "100KB")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    model = emo_slice.load_model(tmp_path / "m")
    assert model.config.num_experts == 9
    proc = invoke("info", tmp_path / "m")
    assert proc.returncode == 0 and "experts per layer" in proc.stdout and "12.5%" in proc.stdout
    assert_one_line_error(invoke("init", "--out", tmp_path / "m"), "--overwrite")


def test_init_save_dtype_is_the_stored_dtype(tmp_path):
    proc = invoke("init", "--out", tmp_path / "bf", "--preset", "tiny", "--save-dtype", "bfloat16", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["save_dtype"] == "bfloat16"
    assert str(Checkpoint(tmp_path / "bf").stored_dtype) == "torch.bfloat16"
    # --dtype means the compute dtype everywhere; init computes nothing, so it has no --dtype
    assert_one_line_error(invoke("init", "--out", tmp_path / "x", "--dtype", "bfloat16"), "No such option: --dtype")
    assert not (tmp_path / "x").exists()
