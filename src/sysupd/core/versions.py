"""Release versions: parsing and ordering, with semantic-versioning precedence.

A version is ``MAJOR.MINOR.PATCH`` with an optional pre-release (``1.2.0``, ``1.3.0-rc.1``), as in
semantic versioning 2.0.0, with two narrowings so that one precedence means one spelling:

- build metadata (``+build.5``) is refused: it would give two releases the same precedence;
- a version is at most ``MAX_VERSION_CHARS`` ASCII characters (it becomes part of file names).

Invariants: ``parse_version`` accepts exactly that grammar and nothing else (no ``v`` prefix, no
spaces, no leading zeros in numeric parts, ASCII digits only); ``str(parse_version(t)) == t`` for
every accepted ``t``; two versions are equal exactly when their texts are equal; ordering is
semantic-versioning precedence (a pre-release sorts before its release; numeric identifiers
compare numerically and sort before alphanumeric ones; a longer identifier list wins a tie).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["MAX_VERSION_CHARS", "Version", "parse_version"]

MAX_VERSION_CHARS = 64

_NUMBER = r"(?:0|[1-9][0-9]*)"
_IDENTIFIER = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_VERSION_RE = re.compile(
    rf"(?P<major>{_NUMBER})\.(?P<minor>{_NUMBER})\.(?P<patch>{_NUMBER})"
    rf"(?:-(?P<pre>{_IDENTIFIER}(?:\.{_IDENTIFIER})*))?",
    re.ASCII,
)


@functools.total_ordering
@dataclass(frozen=True, eq=True, order=False)
class Version:
    """A parsed release version; compare with ``<`` and ``==`` (semantic-versioning precedence)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        numbers = (self.major, self.minor, self.patch)
        parts_ok = isinstance(self.prerelease, tuple) and all(
            isinstance(part, str) for part in self.prerelease
        )
        if not parts_ok or not all(type(n) is int and n >= 0 for n in numbers):
            raise ValueError(f"invalid version parts {numbers!r} {self.prerelease!r}")
        if _VERSION_RE.fullmatch(str(self)) is None:
            raise ValueError(f"invalid version {str(self)!r}: bad pre-release part")

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{'.'.join(self.prerelease)}" if self.prerelease else core

    @property
    def is_prerelease(self) -> bool:
        """Whether the version carries a pre-release part (``-rc.1``)."""
        return bool(self.prerelease)

    def _precedence(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # A release (rank 1) follows all of its pre-releases (rank 0). Numeric identifiers
        # (kind 0) sort numerically and before alphanumeric ones (kind 1), which sort in ASCII.
        identifiers = tuple(
            (0, int(part), "") if part.isdigit() else (1, 0, part) for part in self.prerelease
        )
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, identifiers)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._precedence() < other._precedence()


def parse_version(text: str) -> Version:
    """The ``Version`` that ``text`` spells.

    Raises:
        ValueError: ``text`` is not ``MAJOR.MINOR.PATCH[-PRERELEASE]``; the message names it.
    """
    if not isinstance(text, str):
        raise ValueError(f"invalid version {text!r}: not a string")
    if len(text) > MAX_VERSION_CHARS:
        raise ValueError(
            f"invalid version {text[:MAX_VERSION_CHARS]!r}…: longer than "
            f"{MAX_VERSION_CHARS} characters"
        )
    match = _VERSION_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid version {text!r}: expected MAJOR.MINOR.PATCH with an optional "
            "pre-release such as 1.2.0 or 1.3.0-rc.1"
        )
    pre = match.group("pre")
    return Version(
        major=int(match.group("major")),
        minor=int(match.group("minor")),
        patch=int(match.group("patch")),
        prerelease=tuple(pre.split(".")) if pre else (),
    )
