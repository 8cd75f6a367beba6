"""Bounds on what any input may hold: finite numbers, text of sensible length, small YAML.

No value from a user (a CLI flag, a YAML or JSON file, the form, the API) should be able to
reach a trainer as NaN or infinity, exhaust the server with a 10 MB "name", or blow up into a
25 MB error message. The checks live here, once, and the config parser, the CLI and the app's
handlers call them.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

from core.errors import ConfigError, Problem

# Text fields: a path or an id never needs more than PATH_MAX (4096 on Linux); a system prompt
# or a chat message may be longer, but not megabytes.
MAX_TEXT = 4096
MAX_LONG_TEXT = 32_768          # system prompts, chat messages, a document to summarize: ~8k tokens
MAX_MAPPING_ITEMS = 64          # column_map / template_vars entries
MAX_YAML_BYTES = 256 * 1024     # a run config is ~3 KB
MAX_YAML_ALIASES = 64           # a config needs none; anchors that nest aliases explode on use
MAX_YAML_NODES = 100_000        # values once every alias is expanded (a config has ~50)
MAX_REPORTED = 200              # characters of a bad value quoted back in a message
MAX_NEW_TOKENS = 2048           # the chat's answer length: a bound on one request's compute

_brief = reprlib.Repr()
_brief.maxstring = MAX_REPORTED
_brief.maxother = MAX_REPORTED
_brief.maxlist = _brief.maxdict = _brief.maxtuple = _brief.maxset = 8
_brief.maxlevel = 3


def brief(value: Any) -> str:
    """``repr(value)`` cut to a few hundred characters (a message never echoes a huge input)."""
    try:
        return _brief.repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not break an error message
        return f"<{type(value).__name__}>"


def clip(text: Any, limit: int = MAX_REPORTED) -> str:
    """``str(text)`` cut to ``limit`` characters, saying how long it was."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def finite(value: float, name: str) -> float:
    """``value`` when it is a finite number.

    Raises:
        ValueError: naming the field (NaN and infinity are never a valid setting).
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}: {value!r} is not a finite number (NaN and infinity are not allowed)")
    return value


def text_problem(value: str, name: str, limit: int | None = None) -> str | None:
    """The message for a text over its limit, or None."""
    limit = limit or limit_for(name)
    if isinstance(value, str) and len(value) > limit:
        return f"{name}: {len(value):,} characters is over the limit of {limit:,}"
    return None


def check_text(value: str, name: str, limit: int | None = None) -> str:
    """``value`` when it is at most ``limit`` characters.

    Raises:
        ConfigError: naming the field, the length and the limit (never the value itself).
    """
    message = text_problem(value, name, limit)
    if message:
        raise ConfigError(message, problems=[Problem(message, f"shorten {name}", field=name)])
    return value


def limit_for(name: str) -> int:
    return MAX_LONG_TEXT if name in LONG_TEXT_FIELDS else MAX_TEXT


# Free text (a message, a document) rather than a name, an id or a path.
LONG_TEXT_FIELDS = frozenset({"system_prompt", "message", "msg", "prompt", "document", "doc", "context", "ctx_text",
                              "question", "q", "system", "sys_prompt"})


def check_yaml_text(text: str, source: str) -> None:
    """Refuse a YAML text too big to be a run config, before it is parsed.

    Raises:
        ConfigError: naming the file, its size and the limit.
    """
    size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else len(text)
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{clip(source, 120)} is {size / 1024:,.0f} KB: a run config is a few KB "
                          f"(the limit is {MAX_YAML_BYTES // 1024} KB)",
                          "keep only the fields of the run config in the file")


def safe_load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` with a size cap and a cap on aliases (no "billion laughs").

    Raises:
        ConfigError: the text is too big or uses too many aliases.
        yaml.YAMLError: a syntax error (the caller reports it with its line).
    """
    import yaml

    check_yaml_text(text, source)

    class _Loader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise ConfigError(
                        f"{clip(source, 120)} uses more than {MAX_YAML_ALIASES} YAML aliases (*name)",
                        "write the values out: a run config needs no anchors or aliases")
            return super().compose_node(parent, index)

    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    if expanded_size(data, MAX_YAML_NODES) > MAX_YAML_NODES:
        raise ConfigError(f"{clip(source, 120)} expands to more than {MAX_YAML_NODES:,} values through its "
                          "aliases", "write the values out: a run config needs no anchors or aliases")
    return data


def expanded_size(data: Any, cap: int) -> int:
    """How many values ``data`` holds with shared (aliased) parts counted each time they are used.

    Memoised by identity, so a "billion laughs" structure is measured in time proportional to
    its few distinct nodes; stops counting past ``cap``.
    """
    memo: dict[int, int] = {}

    def size(obj: Any, depth: int = 0) -> int:
        if depth > 100:
            return cap + 1
        key = id(obj)
        if key in memo:
            return memo[key]
        if isinstance(obj, dict):
            n = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in obj.items())
        elif isinstance(obj, (list, tuple, set)):
            n = 1 + sum(size(v, depth + 1) for v in obj)
        else:
            return 1
        memo[key] = n = min(n, cap + 1)
        return n

    return size(data)


def int_in_range(value: Any, name: str, low: int, high: int) -> int:
    """A whole number in [low, high] from whatever a client sent.

    Raises:
        ConfigError: naming the field and the range (not a number, fractional, out of range).
    """
    try:
        if isinstance(value, bool) or value is None:
            raise ValueError
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, float):
            if not math.isfinite(number) or not number.is_integer():
                raise ValueError
            number = int(number)
        if not isinstance(number, int):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, not {brief(value)}",
                          problems=[Problem(f"{brief(value)} is not a whole number", f"use {low}..{high}",
                                            field=name)]) from None
    if not low <= number <= high:
        raise ConfigError(f"{name} must be from {low} to {high}, not {number}",
                          problems=[Problem(f"{number} is out of range", f"use {low}..{high}", field=name)])
    return number


def float_in_range(value: Any, name: str, low: float, high: float) -> float:
    """A finite number in [low, high] from whatever a client sent.

    Raises:
        ConfigError: naming the field and the range (not a number, NaN, infinity, out of range).
    """
    try:
        if isinstance(value, bool) or value is None:
            raise ValueError
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be a finite number from {low:g} to {high:g}, not {brief(value)}",
                          problems=[Problem(f"{brief(value)} is not a finite number", f"use {low:g}..{high:g}",
                                            field=name)]) from None
    if not low <= number <= high:
        raise ConfigError(f"{name} must be from {low:g} to {high:g}, not {number:g}",
                          problems=[Problem(f"{number:g} is out of range", f"use {low:g}..{high:g}", field=name)])
    return number
