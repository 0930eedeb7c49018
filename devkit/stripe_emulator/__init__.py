"""A stateful Stripe emulator for tests, the demo and the benchmarks.

The daemon never imports it.
"""

from .emulator import ApiRequest, Emulator, EmulatorConfig
from .server import EmulatorServer
from .state import Clock

__all__ = ["ApiRequest", "Clock", "Emulator", "EmulatorConfig", "EmulatorServer"]
