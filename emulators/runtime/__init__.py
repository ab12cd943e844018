"""A stub of the Sekoia runtime that the real sekoia-automation-sdk talks to unchanged."""

from emulators.runtime.server import RuntimeStub, RuntimeKnobs

__all__ = ["RuntimeKnobs", "RuntimeStub"]
