"""Small helpers shared by the tasks."""

from __future__ import annotations

from collections.abc import Sequence


def conv_layers(value: str | Sequence[int | str]) -> tuple[int | str, ...]:
    """VGG-style layer list from config: "64,64,MP,128" or a sequence -> (64, 64, "MP", 128)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[int | str] = []
    for item in items:
        item = item.strip() if isinstance(item, str) else item
        if isinstance(item, str) and item.upper() == "MP":
            out.append("MP")
        else:
            try:
                out.append(int(item))
            except ValueError:
                raise ValueError(
                    f"conv layer list: expected ints or 'MP', got {item!r} in {value!r}"
                ) from None
    return tuple(out)
