"""Typed records at the storage and XCom boundary: dataclasses in, JSON objects out.

Records travel as dataclasses inside the library; `to_dict` and `from_dict` are used only where a
record is written to or read from storage or XCom. `from_dict` checks every field against its type
hint, so a hand-edited or truncated object is refused with an error naming the object and the
missing or wrong field instead of failing later with a `KeyError`.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, asdict, fields, is_dataclass
from typing import Any, Self, TypeGuard, TypeVar

from mnist_pipeline.errors import MnistPipelineError, RegistryError

__all__ = ["Record", "is_json_list", "is_json_object"]

_Hint = Any
_R = TypeVar("_R", bound="Record")


class Record:
    """Mixin for frozen dataclasses that cross the storage or XCom boundary."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def carried_over(cls, source: object, **values: Any) -> Self:
        """A record taking every field it shares by name with `source`, then `values`."""
        shared = {spec.name: getattr(source, spec.name) for spec in fields(cls) if hasattr(source, spec.name)}  # type: ignore[arg-type]
        return cls(**(shared | values))

    @classmethod
    def from_dict(cls, payload: object, what: str, error: type[MnistPipelineError] = RegistryError) -> Self:
        """`payload` as this record; `what` names the object in the error (`error`, by default
        `RegistryError`) raised for a missing or mistyped field. Unknown keys are ignored, so
        objects written by newer code stay readable."""
        if not isinstance(payload, Mapping):
            raise error(f"{what}: expected a JSON object, got {type(payload).__name__}")
        hints = _type_hints(cls)
        values: dict[str, Any] = {}
        for spec in fields(cls):  # type: ignore[arg-type]
            if spec.name not in payload:
                if spec.default is MISSING and spec.default_factory is MISSING:
                    raise error(f"{what} lacks the field {spec.name!r}")
                continue
            values[spec.name] = _converted(
                payload[spec.name], hints[spec.name], f"{what}: {spec.name}", error
            )
        return cls(**values)


def is_json_object(value: object) -> TypeGuard[dict[str, Any]]:
    """Whether `value` is a JSON object as `json.loads` gives one (string keys, any values)."""
    return isinstance(value, dict)


def is_json_list(value: object) -> TypeGuard[list[Any]]:
    """Whether `value` is a JSON array as `json.loads` gives one."""
    return isinstance(value, list)


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # Resolving the hints dominates parsing a record; a class's hints never change.
    return typing.get_type_hints(cls)


def _converted(value: object, hint: _Hint, where: str, error: type[MnistPipelineError]) -> Any:
    """`value` checked against `hint` (nested records converted); a mismatch raises `error`."""
    options = _union_members(hint)
    if value is None:
        if type(None) in options or hint is Any:
            return None
        raise error(f"{where} must not be null")
    for option in options:
        if _is_record(option):
            if isinstance(value, Mapping):
                return option.from_dict(value, where, error)
            continue
        item = _record_items(option)
        if item is not None and isinstance(value, list | tuple):
            return [_converted(element, item, f"{where}[{i}]", error) for i, element in enumerate(value)]
        if _matches(value, option):
            return float(value) if option is float else value  # type: ignore[arg-type]
    wanted = " or ".join(_describe(option) for option in options)
    raise error(f"{where} must be {wanted}, got {value!r}")


def _is_record(hint: _Hint) -> bool:
    return isinstance(hint, type) and is_dataclass(hint) and issubclass(hint, Record)


def _record_items(hint: _Hint) -> _Hint | None:
    """The record type of `list[SomeRecord]`; None for any other hint."""
    if typing.get_origin(hint) is list and len(typing.get_args(hint)) == 1:
        (item,) = typing.get_args(hint)
        return item if _is_record(item) else None
    return None


def _union_members(hint: _Hint) -> tuple[_Hint, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _matches(value: object, hint: _Hint) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint) or hint
    if origin is bool:
        return isinstance(value, bool)
    if origin in (int, float):
        return isinstance(value, int | float if origin is float else int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, list | tuple)
    if origin is dict:
        return isinstance(value, Mapping)
    return isinstance(origin, type) and isinstance(value, origin)


def _describe(hint: _Hint) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint) or hint
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "an object"}
    return names.get(origin, "a list" if origin in (list, tuple) else getattr(origin, "__name__", str(hint)))
