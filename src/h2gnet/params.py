"""One rule per parameter: config dataclasses, the command line and TOML configs all check values with it.

A config dataclass declares each checked field with :func:`param` (its default and its :class:`Rule`) and
calls :func:`check_fields` in ``__post_init__``. The CLI builds its options from the same fields
(``add_param``), so defaults and accepted ranges exist once, and its configs from the parsed arguments
(:func:`config_from_args`); TOML sections become dataclasses through :func:`from_mapping`, which refuses
unknown (misspelt) keys.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, cast

from h2gnet.errors import H2GNetError

Config = TypeVar("Config")


class ParameterError(H2GNetError):
    """A parameter outside its accepted values; ``name`` is the option or key."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        super().__init__(None, f"{name}: {problem}")
        self.problem = problem


@dataclass(frozen=True)
class Rule:
    """Accepted values of one parameter: type, optional closed/open bounds, choices, ``None`` allowed."""

    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    optional: bool = False
    help: str = ""
    unit: str = ""

    def describe(self) -> str:
        """The accepted values in words, e.g. ``an integer ≥ 1`` or ``a finite number in (0, 1]``."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        what = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}[self.kind]
        unit = f" {self.unit}" if self.unit else ""
        if self.low is not None and self.high is not None:
            return (f"{what} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}{unit}")
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '≥'} {self.low:g}{unit}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '≤'} {self.high:g}{unit}"
        return what

    def check(self, name: str, value: Any) -> Any:
        """``value`` (an int becomes a float for a float rule) or :class:`ParameterError` naming ``name``."""
        if value is None and self.optional:
            return None
        bad = ParameterError(name, f"must be {self.describe()} (got {value!r})")
        if self.kind is bool:
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind is str:
            if not isinstance(value, str) or (self.choices is not None and value not in self.choices):
                raise bad
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if self.kind is int:
            if not isinstance(value, int):
                raise bad
        else:
            value = float(value)
            if not math.isfinite(value):
                raise bad
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise bad
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise bad
        return value

    def parse(self, text: str) -> Any:
        """Command-line text to a checked value (for argparse ``type=``; errors name the option there)."""
        if self.kind is str:
            value: Any = text
        else:
            try:
                value = int(text) if self.kind is int else float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be {self.describe()} (got {text})") from None
        try:
            return self.check("", value)
        except ParameterError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()} (got {text})") from None


def param(default: Any, rule: Rule) -> Any:
    """A dataclass field with its default and accepted values (``rule``)."""
    return field(default=default, metadata={"rule": rule})


def rule_of(cls: type, name: str) -> Rule:
    """The :class:`Rule` of field ``name`` of config dataclass ``cls``."""
    for f in fields(cls):
        if f.name == name and "rule" in f.metadata:
            return f.metadata["rule"]
    raise KeyError(f"{cls.__name__}.{name} has no rule")


def default_of(cls: type, name: str) -> Any:
    """The default value of field ``name`` of dataclass ``cls``."""
    for f in fields(cls):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


def check_fields(obj: Any) -> None:
    """Check every field of dataclass ``obj`` that has a rule (call from ``__post_init__``)."""
    for f in fields(obj):
        rule = f.metadata.get("rule")
        if rule is not None:
            object.__setattr__(obj, f.name, rule.check(f.name, getattr(obj, f.name)))


def from_mapping(cls: type, data: dict, source: str | Path | None, section: str = "",
                 allowed: set[str] | None = None, **given: Any) -> Any:
    """Build config dataclass ``cls`` from a TOML section; unknown keys and bad values are errors
    naming ``source`` (the file), the section and the key. ``allowed``: the keys a user may set
    (default: every field not in ``given``)."""
    where = f"[{section}] " if section else ""
    known = allowed if allowed is not None else {f.name for f in fields(cls)} - set(given)
    unknown = sorted(k for k in data if k not in known)
    if unknown:
        raise H2GNetError(source, f"{where}unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    try:
        return cls(**given, **data)
    except ParameterError as exc:
        raise H2GNetError(source, f"{where}{exc}") from None
    except TypeError as exc:  # e.g. a list where a table was expected
        raise H2GNetError(source, f"{where}{exc}") from None


def add_param(parser: argparse._ActionsContainer, cls: type, name: str, *flags: str, help: str | None = None,
              **kwargs: Any) -> argparse.Action:
    """An option whose default and accepted values are field ``name`` of ``cls`` (one home per parameter)."""
    rule = rule_of(cls, name)
    flags = flags or ("--" + name.replace("_", "-"),)
    default = kwargs.pop("default", default_of(cls, name))
    text = help if help is not None else rule.help
    shown = "" if default is None else f" (default {default:g})" if isinstance(default, float) else \
        f" (default {default})"
    if rule.choices is not None:
        kwargs.setdefault("choices", rule.choices)
    return parser.add_argument(*flags, dest=name, type=rule.parse if rule.choices is None else str,
                               default=default, help=f"{text}{shown}".strip(), **kwargs)


def config_from_args(cls: type[Config], args: argparse.Namespace, **given: Any) -> Config:
    """Config dataclass ``cls`` from parsed command-line ``args``: each field from ``given`` when there, else
    from the attribute of ``args`` of its name (the option's ``dest``, as :func:`add_param` sets it), else
    its default. A key of ``given`` that is no field of ``cls``, or a field without a default that neither
    gives, is a ``TypeError`` naming it (a mistake of the command's code); values are checked by ``cls``."""
    init = [f for f in fields(cast(type, cls)) if f.init]
    names = [f.name for f in init]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {unknown[0]!r} (fields: {', '.join(names)})")
    values = {name: getattr(args, name) for name in names if name not in given and hasattr(args, name)}
    missing = [f.name for f in init if f.name not in given and f.name not in values
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise TypeError(f"{cls.__name__}: no value for field {missing[0]!r} (no such parsed option, and not given)")
    return cls(**values, **given)


def add_rule_option(parser: argparse._ActionsContainer, rule: Rule, *flags: str, default: Any = None,
                    help: str | None = None, **kwargs: Any) -> argparse.Action:
    """An option checked by a shared :class:`Rule` that no config dataclass holds (e.g. a slide's µm/px)."""
    return parser.add_argument(*flags, type=rule.parse, default=default,
                               help=help if help is not None else rule.help, **kwargs)
