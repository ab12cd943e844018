"""Pytest fixtures for the Office 365 emulator. Import the ones you need into a test module:

from tests.o365_fixtures import o365_emulator, o365_emulator_factory  # noqa: F401
"""

from __future__ import annotations

import pytest

from emulators.office365 import Office365Emulator
from emulators.office365.harness import EmulatorProcess


@pytest.fixture(scope="module")
def o365_emulator():
    """A subprocess emulator with the fixture content (no subscription started); yields the EmulatorProcess."""
    with EmulatorProcess() as emulator:
        yield emulator


@pytest.fixture
def o365_emulator_factory():
    """make(**config_overrides) -> (Office365Emulator, info): in-process emulators in threads, stopped afterwards."""
    started: list[Office365Emulator] = []

    def make(**overrides):
        emulator = Office365Emulator(**overrides)
        info = emulator.start_in_thread()
        started.append(emulator)
        return emulator, info

    yield make
    for emulator in started:
        emulator.stop_thread()
