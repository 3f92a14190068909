"""Growth specs from the command line: ``d_model=256,n_layers=8,ramp_steps=100`` or a TOML file.

Values are TOML (so ``depth_position=[2,5]`` and ``depth_position="interleave"`` work; a bare word is
taken as a string). A TOML file may hold the keys at top level or in a ``[grow]`` table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flm.config import GrowthConfig, _validated, tomllib
from flm.errors import FlmError


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside [...] or quotes."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip().strip("\"'")


def parse_growth_spec(spec: str) -> GrowthConfig:
    """A GrowthConfig from KEY=VALUE pairs or from a TOML file (keys at top level or under [grow])."""
    path = Path(spec)
    if "=" not in spec and path.suffix == ".toml":
        if not path.is_file():
            raise FlmError(f"--to {spec}: file not found (pass KEY=VALUE pairs or a TOML file with [grow])")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise FlmError(f"--to {spec}: not valid TOML: {e}") from None
        table = data.get("grow", data)
        if not isinstance(table, dict):
            raise FlmError(f"--to {spec}: [grow] must be a table of growth keys")
        return _validated(GrowthConfig, table, where=f"--to {spec}")
    data: dict[str, Any] = {}
    for part in _split_top_level(spec):
        if "=" not in part:
            raise FlmError(
                f"--to: {part!r} is not KEY=VALUE; write e.g. --to d_model=256,n_layers=8,ramp_steps=100"
            )
        key, raw = part.split("=", 1)
        if key.strip() in data:  # the last would win silently
            raise FlmError(f"--to: {key.strip()} is given twice; give each key once")
        data[key.strip()] = _value(raw)
    if not data:
        raise FlmError("--to: empty growth spec; write e.g. --to d_model=256,n_layers=8")
    return _validated(GrowthConfig, data, where="--to")
