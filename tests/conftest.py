import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# spin-waiting OpenMP threads make small batched decodes ~20x slower on a busy 2-core machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "NESYLIB_DATA_DIR" not in os.environ and (_shared / "SHA256SUMS").is_file():
    os.environ["NESYLIB_DATA_DIR"] = str(_shared)

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = os.environ.get("NESYLIB_DATA_DIR")
    if not d:
        pytest.skip("no data directory (set NESYLIB_DATA_DIR)")
    return Path(d)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A random 2-layer LLaMA with the SmolLM2 tokenizer (built once per machine)."""
    from nesylib.models import provision_tiny_llama

    return provision_tiny_llama()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from nesylib.models import provision_smollm2

    return provision_smollm2()
