"""Values of the CLI's options: shapes, channel lists, batch sizes, with errors that name the option's text."""

from __future__ import annotations

import click


def parse_channels(text: str | None) -> int | list[int] | None:
    """--channel: one index, or a comma list for a model of several input channels."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a channel index or a list like 2,0") from None
    if min(values) < 0:
        raise click.BadParameter(f"{text!r}: channel indices start at 0")
    return values[0] if len(values) == 1 and "," not in text else values


def parse_batch_size(text: str | None) -> int | str | None:
    """--batch-size: a count, or auto."""
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number of windows or auto") from None


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a shape like 16x8192x8192") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: sizes must be >= 1")
    return values
