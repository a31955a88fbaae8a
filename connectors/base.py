"""The connector contract. A connector knows one wire protocol: it parses and validates
messages, answers protocol messages itself, and turns audio into normalised `Frame`s that it
hands to a `DialogPort`. It never imports the engine or a surface."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

Channel = Literal["customer", "agent"]
SAMPLE_RATE = 8000


@dataclass(frozen=True, slots=True)
class Frame:
    """Normalised audio: int16 L16 8 kHz mono samples of one channel of one dialog.
    `position` is the index of the first sample since the start of the call, so pauses and
    discarded stretches keep the timeline honest."""
    dialog_id: str
    channel: Channel
    position: int
    samples: np.ndarray


class ConnectorError(Exception):
    """A protocol violation or unusable input, with a stable code for the peer."""

    def __init__(self, code: str, message: str, close_code: int = 1008):
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code


class DialogPort(Protocol):
    """What a connector may do with the dialog its peer streams into."""

    dialog_id: str

    def push(self, frame: Frame) -> None: ...

    async def wait_capacity(self) -> None:
        """Return when the dialog can take more audio. A connector whose peer may send faster
        than real time awaits this after each frame, so TCP slows the sender down instead of
        the engine dropping audio."""
        ...

    async def end(self, reason: str) -> None: ...
