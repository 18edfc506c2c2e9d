import os

import pytest
import torch

os.environ.setdefault("RL_WARNINGS", "False")

# The networks in tests are tiny: one intra-op thread is faster than two on a 2-core machine, and
# avoids OpenMP spin-wait stalls when other processes share the cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
