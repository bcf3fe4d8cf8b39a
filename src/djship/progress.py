"""How long steps report themselves; the CLI supplies the implementation that prints."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol


class Reporter(Protocol):
    def step(self, title: str) -> AbstractContextManager[None]:
        """Announce a step, time it, and show whether it succeeded."""

    def note(self, text: str) -> None:
        """A line of information between steps."""
