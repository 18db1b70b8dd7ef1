"""Release versions: what parses, what is refused (naming the text), and semver precedence."""

from __future__ import annotations

import itertools
import random

import pytest

from sysupd.core.versions import MAX_VERSION_CHARS, Version, parse_version


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0", Version(0, 0, 0)),
        ("1.2.0", Version(1, 2, 0)),
        ("10.20.30", Version(10, 20, 30)),
        ("1.3.0-rc.1", Version(1, 3, 0, ("rc", "1"))),
        ("1.0.0-alpha-beta.0.x-y", Version(1, 0, 0, ("alpha-beta", "0", "x-y"))),
        ("1.0.0-0A.is.legal", Version(1, 0, 0, ("0A", "is", "legal"))),
        ("999999999999.0.1", Version(999999999999, 0, 1)),
    ],
)
def test_valid_versions_parse_and_print_back(text: str, expected: Version) -> None:
    parsed = parse_version(text)
    assert parsed == expected
    assert str(parsed) == text
    assert parsed.is_prerelease == bool(expected.prerelease)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1.2",
        "1.2.3.4",
        "v1.2.0",
        " 1.2.0",
        "1.2.0 ",
        "1.2.0\n",
        "01.2.0",
        "1.02.0",
        "1.2.00",
        "1.2.0-",
        "1.2.0-rc..1",
        "1.2.0-rc.01",
        "1.2.0-rc_1",
        "1.2.0+build.5",
        "1.2.0-rc.1+build",
        "-1.2.0",
        "1.2.-0",
        "\uff11.2.0",  # fullwidth digit one
        "1.2.0-r\u00e9",
        "1.2.0/../x",
        "1." + "9" * MAX_VERSION_CHARS + ".0",
    ],
)
def test_invalid_versions_are_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="invalid version") as caught:
        parse_version(text)
    assert repr(text[:MAX_VERSION_CHARS])[:-1] in str(caught.value)


def test_version_parts_are_checked_when_built_directly() -> None:
    with pytest.raises(ValueError, match="invalid version"):
        Version(1, 2, 3, ("rc", "01"))
    with pytest.raises(ValueError, match="invalid version"):
        Version(-1, 0, 0)


def test_semver_precedence_example_chain() -> None:
    """The ordering example of semver.org section 11, plus release ordering."""
    chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1-rc.1",
        "1.0.1",
        "1.2.0",
        "1.3.0-rc.1",
        "1.3.0",
        "1.10.0",
        "2.0.0",
    ]
    versions = [parse_version(text) for text in chain]
    shuffled = versions[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled) == versions
    for lower, higher in itertools.pairwise(versions):
        assert lower < higher
        assert higher > lower
        assert lower <= higher
        assert lower != higher


def test_numeric_identifiers_compare_numerically_and_before_alphanumeric() -> None:
    assert parse_version("1.0.0-rc.2") < parse_version("1.0.0-rc.10")
    assert parse_version("1.0.0-9") < parse_version("1.0.0-a")
    assert parse_version("1.0.0-rc") < parse_version("1.0.0-rc.0")
    assert parse_version("1.0.0-B") < parse_version("1.0.0-a")  # ASCII order


def test_versions_are_frozen_and_hashable() -> None:
    version = parse_version("1.2.0")
    assert {version, parse_version("1.2.0")} == {version}
    with pytest.raises(AttributeError):
        version.major = 2  # type: ignore[misc]
    assert version.__lt__("1.2.0") is NotImplemented
