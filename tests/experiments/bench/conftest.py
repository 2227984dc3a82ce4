import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # On a loaded machine, multi-threaded tiny ops stall waiting for a core: keep the benchmarks' smoke runs fast.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
