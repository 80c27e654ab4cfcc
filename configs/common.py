"""Helpers shared by the experiment configs."""

from __future__ import annotations

VGGISHISH16_LAYERS = "64,64,MP,128,128,MP,256,256,256,MP,512,512,512,MP,512,512,512"


def parse_arg(arg: str | None, **defaults):
    """Parses a config argument "tiny" or "tiny,k=v" into a dict with typed defaults.

    Bare words set boolean flags; `k=v` pairs are cast to the type of the default.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        kind = type(defaults[key])
        out[key] = (
            True
            if not value
            else (value.lower() in ("1", "true", "yes") if kind is bool else kind(value))
        )
    return out
