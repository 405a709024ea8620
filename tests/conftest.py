"""Shared fixtures: every test runs on the CPU, in GRAPH mode (as the scripts do) unless it asks
for ``pynative``."""
import mindspore as ms
import pytest


@pytest.fixture(autouse=True)
def cpu_graph_mode():
    ms.set_device('CPU')
    ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture
def pynative():
    """This test runs in PyNative mode; GRAPH mode comes back after it."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)
