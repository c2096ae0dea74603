import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random tiny EMO checkpoint (preset tiny), written by the tests themselves."""
    from emo_slice.io.build import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", seed=0)
