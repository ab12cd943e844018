import pytest

from tests.support.runtime import Runtime


@pytest.fixture
def runtime(tmp_path):
    stub = Runtime(tmp_path / "runtime")
    yield stub
    stub.stop()
