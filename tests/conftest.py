import pytest

from emulators.process import running_children
from emulators.runtime.harness import Runtime


@pytest.fixture(autouse=True)
def _end_child_processes():
    """Whatever a test started and left running is ended when it finishes, fails or times out (the fixtures of a
    wider scope were set up before, so their servers are not touched)."""
    before = running_children()
    yield
    for child in running_children() - before:
        child.stop()


@pytest.fixture
def runtime(tmp_path):
    stub = Runtime(tmp_path / "runtime")
    yield stub
    stub.stop()


@pytest.fixture
def reset_fatal():
    """A trigger's fatal error is a class attribute: none before the test, none left after it (modules running
    triggers in-process ask for it: ``pytestmark = pytest.mark.usefixtures("reset_fatal")``)."""
    from connectors.trigger import CollectorTrigger

    CollectorTrigger.fatal_error = None
    yield
    CollectorTrigger.fatal_error = None
