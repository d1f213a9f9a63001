"""The pipeline's errors: one base, and the kinds the CLI maps to exit codes.

Messages say what failed, where (path, block), with which value, and what to do.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose (CLI exit 1)."""

    exit_code = 1


class InputError(PipelineError):
    """The user's input is wrong: a path, a file, a value (CLI exit 2)."""

    exit_code = 2


class CheckpointError(InputError):
    """A model checkpoint is missing, unsafe, corrupt or of another architecture."""


class InputDataError(InputError):
    """The input's data cannot be used: an unreadable chunk, NaN or Inf values (found by a block)."""


class OutputWriteError(PipelineError):
    """Writing the output failed (disk full, file too large, a store error); it stays incomplete."""
