"""Test-session setup shared by every test module.

Hub settings come first: huggingface_hub reads HF_ENDPOINT / HF_HOME when it is imported, so they
must be set before anything imports it (transformers, datasets, ecg_hub). Nothing in the test suite
reaches the real Hub: the Hub tests start a loopback server and point HF_ENDPOINT at it.
"""

import atexit
import os
import shutil
import socket
import tempfile

# The Hub tests (tests/test_hub.py) start a loopback Hub-API server (tests/hub_server.py) on this
# port. HF_ENDPOINT is forced, not defaulted, so no test can ever reach the real Hub.
with socket.socket() as _sock:
    _sock.bind(("127.0.0.1", 0))
    _HUB_PORT = _sock.getsockname()[1]
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{_HUB_PORT}"
# A fresh, private Hugging Face cache for the session (never the user's), removed at exit.
_HF_HOME = tempfile.mkdtemp(prefix="ecg-hub-test-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Inference precision "auto" picks bf16 on a CPU with AVX-512-BF16 / AMX; the numeric tests compare
# with float32 at 1e-5, so the suite runs float32 on every machine (the choice itself is tested by
# mocking the CPU flags in test_inference_precision.py).
os.environ["ECG_HUB_NATIVE_CPU_BF16"] = "0"

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _require_shared_data() -> bool:
    return os.environ.get("ECG_HUB_REQUIRE_SHARED_DATA", "") not in ("", "0", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the project. Tests skip without it, unless ECG_HUB_REQUIRE_SHARED_DATA=1
    (CI), where its absence is a failure."""
    if not SHARED_DATA.is_dir():
        message = f"real ECG data not found at {SHARED_DATA}"
        if _require_shared_data():
            pytest.fail(message + " (ECG_HUB_REQUIRE_SHARED_DATA=1)")
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def hub_server():
    """The loopback Hub-API server (tests/hub_server.py) on the port HF_ENDPOINT names, for the session."""
    from urllib.parse import urlparse

    import huggingface_hub.constants
    from hub_server import HubServer

    endpoint = os.environ["HF_ENDPOINT"]
    if huggingface_hub.constants.ENDPOINT != endpoint:  # imported before this file set it: unsafe
        pytest.fail(f"huggingface_hub uses {huggingface_hub.constants.ENDPOINT}, not the test server {endpoint}")
    with HubServer(port=urlparse(endpoint).port) as server:
        yield server


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~10x faster than two (no
    spinning threads competing with other processes). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_ecg2tok_tokenizer(tmp_path_factory) -> Path:
    """The folder of a stage-A ECG2TOK tokenizer trained once per session by the real
    ``recipes/ecg2tok/tokenizer_tiny.yaml`` through ``pretrain()`` (synthetic ECGs, ~20 s on 2 cores):
    ``<dir>/model`` (save_pretrained + preprocessor_config.json) and ``<dir>/summary.json``."""
    import torch

    from ecg_hub.recipe import load_recipe
    from ecg_hub.training.pretrain import PretrainRecipe, pretrain

    output_dir = tmp_path_factory.mktemp("ecg2tok_tokenizer_tiny")
    recipe = load_recipe(
        "ecg2tok/tokenizer_tiny",
        [f"output_dir={output_dir}", "training.progress_bar=false"],
        schema=PretrainRecipe,
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain(recipe)
    finally:
        torch.set_num_threads(before)
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return output_dir
