"""Errors meant for a person: what is wrong, with which file, and what to do about it."""

from __future__ import annotations

from pathlib import Path


class LlmcondError(Exception):
    """Base error. ``str(err)`` is a complete message for the UI and the console."""

    def __init__(self, what: str, *, path: str | Path | None = None, fix: str | None = None) -> None:
        self.what = what
        self.path = None if path is None else str(path)
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        head = f"{self.path}: {self.what}" if self.path else self.what
        return f"{head}. {self.fix[:1].upper()}{self.fix[1:]}" if self.fix else head


class ModelFileError(LlmcondError):
    """A model, tokenizer or adapter file is missing, unreadable, corrupt or of an unknown kind."""


class IncompatibleModelsError(LlmcondError):
    """An LLM and an adapter (or a LoRA) that cannot work together."""


class PromptError(LlmcondError):
    """A prompt that cannot be encoded as asked."""
