import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny shapes gain nothing from intra-op threads, and on a shared 2-core box spinning OpenMP threads make
    them 10x slower; restored afterwards so other test packages keep their setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
