"""A module-scoped autouse fixture that runs torch on one thread; a test module imports it
(`from tests.torch_threads import one_torch_thread  # noqa: F401`) to use it."""

import pytest
import torch


@pytest.fixture(scope='module', autouse=True)
def one_torch_thread():
  """torch's reference computations on one thread for the module's tests, then torch's
  setting as it was. On a busy 2-core machine torch's second thread mostly waits (its
  CPU time counts all the same): a ResNet-50 FPN forward at 320x384 took 2 s of CPU
  on two threads, 0.4 s on one."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)
