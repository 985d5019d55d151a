"""JSON as every file and response of ours writes it: strict (RFC 8259), never the bare NaN or Infinity that Python's
json module writes by default and other readers (JavaScript's JSON.parse, jq, Go, Rust's serde) refuse."""

from __future__ import annotations

import json
import math


def dumps(value, **options) -> str:
    """`value` as strict JSON (json.dumps' `options`); a ValueError, a bug, when a NaN or infinity reaches it: where a
    number may be missing (a diverged trial's metrics), pass the value through `nulled` first."""
    return json.dumps(value, allow_nan=False, **options)


def nulled(value):
    """`value` with every NaN and infinity, in its lists and mappings too, made None (JSON's null): a number no trial
    measured is missing, not a number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: nulled(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [nulled(item) for item in value]
    return value
