"""What a long encode tells its caller and how the caller stops it: a small context passed Engine -> Pipeline.

The library says what it is doing (loading a model and its tokenizer, encoding N prompts) through ``show`` (the
text, and whether it is worth a console line: the slow, rare steps are) and checks ``should_stop`` between rows
or chunks; a caller (the WebUI layer) fills both from its host's state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lib_llmcond.errors import LlmcondError


class Interrupted(LlmcondError):
    """The caller asked the encode to stop (e.g. the WebUI's Interrupt button); not a failure to fall back from."""


def _silent(text: str, console: bool) -> None:
    pass


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Progress:
    show: Callable[[str, bool], None] = _silent
    should_stop: Callable[[], bool] = _never

    def say(self, text: str, *, console: bool = False) -> None:
        self.show(text, console)

    def check(self, where: str) -> None:
        """Raise :class:`Interrupted` when the caller asked to stop; ``where`` names the point reached."""
        if self.should_stop():
            raise Interrupted(
                f"interrupted while encoding the prompt ({where})",
                fix="start the generation again when you want it",
            )


QUIET = Progress()
