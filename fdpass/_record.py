"""A base for fdpass's small immutable value types.

It gives what a frozen dataclass gives (keyword construction, repr, equality
and hashing by field values, and AttributeError on assignment) without
importing dataclasses, which pulls in inspect and costs about 10 ms at start-up.
"""

from __future__ import annotations

# typing costs milliseconds to import, and mypy reads this name as typing's.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator


class Frozen:
    """Immutable record whose fields are the names in the subclass's FIELDS, in order.

    A subclass sets ``__slots__ = FIELDS``, and its __init__ passes the
    field values, in FIELDS order, to _store().
    """

    __slots__ = ()
    FIELDS: tuple[str, ...] = ()

    def _store(self, *values: object) -> None:
        # Frozen.__setattr__ refuses every assignment, so this bypasses it.
        for name, value in zip(type(self).FIELDS, values, strict=True):
            object.__setattr__(self, name, value)

    def _fields(self) -> Iterator[tuple[str, object]]:
        for name in type(self).FIELDS:
            yield name, getattr(self, name)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is immutable")

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self._fields())
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frozen) or type(other) is not type(self):
            return NotImplemented
        return tuple(self._fields()) == tuple(other._fields())

    def __hash__(self) -> int:
        return hash(tuple(self._fields()))
