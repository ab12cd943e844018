"""Local HTTPS emulator of Entra ID client-credentials auth and the Office 365 Management Activity API."""

from .config import CONTENT_TYPES, EmulatorConfig
from .server import Office365Emulator

__all__ = ["CONTENT_TYPES", "EmulatorConfig", "Office365Emulator"]
