import pytest

from emulators.runtime.harness import Runtime


@pytest.fixture
def runtime(tmp_path):
    stub = Runtime(tmp_path / "runtime")
    yield stub
    stub.stop()
