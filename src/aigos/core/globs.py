"""Name and domain patterns: validated when a policy is written, compiled once, matched in nanoseconds.

Two kinds, both case-insensitive:

- **name globs** (tools, actions, resources): ``*`` stands for any run of characters (``/`` included), ``?``
  for one character; anything else for itself. ``web_*`` matches ``web_search``.
- **domain globs**: a host name (``api.company.com``), ``*`` for every host, or ``*.company.com`` for every
  host *under* ``company.com`` (not ``company.com`` itself, as in TLS certificates and the AIGRC spec). A
  wildcard anywhere else is refused at write time, so a pattern means what it looks like.

A matcher is a plain callable on an already lower-cased value; the common shapes (everything, exact,
prefix, suffix) avoid regular expressions, which cost several times more per call.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

Matcher = Callable[[str], bool]

MAX_PATTERN = 256
_FORBIDDEN = re.compile(r"[\s\[\]{}\x00-\x1f\x7f]")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def name_glob_error(pattern: object) -> str | None:
    """Why ``pattern`` is not a valid name glob, or ``None`` when it is."""
    if not isinstance(pattern, str) or not pattern:
        return "must be a non-empty string"
    if len(pattern) > MAX_PATTERN:
        return f"must be at most {MAX_PATTERN} characters"
    if _FORBIDDEN.search(pattern):
        return (
            "may not contain whitespace, control characters, brackets or braces (only * and ? are wildcards)"
        )
    return None


def domain_glob_error(pattern: object) -> str | None:
    """Why ``pattern`` is not a valid domain glob, or ``None`` when it is."""
    if not isinstance(pattern, str) or not pattern:
        return "must be a non-empty string"
    if pattern == "*":
        return None
    host = pattern.lower().rstrip(".")
    if len(host) > 253:
        return "must be at most 253 characters"
    labels = host.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            return "a wildcard must be followed by at least two labels, as in *.company.com"
    for label in labels:
        if "*" in label or "?" in label:
            return "a wildcard may only be the whole leftmost label, as in *.company.com"
        if not _LABEL.match(label):
            return (
                f"label {label!r} is not a valid host name label (letters, digits, hyphens; IDNs in punycode)"
            )
    return None


@functools.lru_cache(maxsize=16_384)
def name_matcher(pattern: str) -> Matcher:
    """A matcher for a (valid) name glob; call it with a lower-cased name."""
    lowered = pattern.lower()
    if lowered == "*":
        return _everything
    if "?" not in lowered:
        stars = lowered.count("*")
        if stars == 0:
            return lowered.__eq__
        if stars == 1 and lowered.endswith("*"):
            prefix = lowered[:-1]
            return lambda value: value.startswith(prefix)
        if stars == 1 and lowered.startswith("*"):
            suffix = lowered[1:]
            return lambda value: value.endswith(suffix)
    parts = (".*" if char == "*" else "." if char == "?" else re.escape(char) for char in lowered)
    regex = re.compile("".join(parts), re.DOTALL)
    return lambda value: regex.fullmatch(value) is not None


@functools.lru_cache(maxsize=16_384)
def domain_matcher(pattern: str) -> Matcher:
    """A matcher for a (valid) domain glob; call it with a value from ``normalize_domain``."""
    host = pattern.lower().rstrip(".")
    if host == "*":
        return _everything
    if host.startswith("*."):
        suffix = host[1:]
        return lambda value: value.endswith(suffix)
    return host.__eq__


def any_of(matchers: Iterable[Matcher]) -> Matcher:
    """One matcher that matches when any of ``matchers`` does (or never, for none)."""
    items = tuple(matchers)
    if not items:
        return nothing
    if len(items) == 1:
        return items[0]
    if _everything in items:
        return _everything
    return lambda value: any(match(value) for match in items)


def names(patterns: Iterable[str]) -> Matcher:
    """A matcher for any of the name globs ``patterns``, compiled into as few C-level tests as possible.

    Exact names become one set look-up, ``prefix*`` patterns one ``str.startswith(tuple)``, ``*suffix``
    patterns one ``str.endswith(tuple)``, and the rest one alternation: a rule with ten tool patterns
    costs about what a rule with one does.
    """
    lowered = tuple(dict.fromkeys(pattern.lower() for pattern in patterns))
    if not lowered:
        return nothing
    if "*" in lowered:
        return _everything
    if len(lowered) == 1:
        return name_matcher(lowered[0])
    exact, starts, ends, other = _shapes(lowered)
    return _combine(exact, starts, ends, _alternation(other))


def prefixes(patterns: Iterable[str]) -> tuple[str, ...] | None:
    """The literal prefixes when every name glob in ``patterns`` is ``prefix*`` (else ``None``).

    A caller in a hot loop tests ``value.startswith(prefixes)`` inline: one C call, no Python frame and
    fewer objects to fetch from memory than a matcher's closure.
    """
    lowered = tuple(dict.fromkeys(pattern.lower() for pattern in patterns))
    if not lowered or "*" in lowered:
        return None
    exact, starts, ends, other = _shapes(lowered)
    return None if exact or ends or other else starts


def _shapes(
    lowered: tuple[str, ...],
) -> tuple[frozenset[str], tuple[str, ...], tuple[str, ...], list[str]]:
    # Exact names, ``prefix*`` prefixes, ``*suffix`` suffixes, and the patterns that need a regex.
    exact: set[str] = set()
    starts: list[str] = []
    ends: list[str] = []
    other: list[str] = []
    for pattern in lowered:
        stars = pattern.count("*")
        if "?" in pattern or stars > 1:
            other.append(pattern)
        elif stars == 0:
            exact.add(pattern)
        elif pattern.endswith("*"):
            starts.append(pattern[:-1])
        elif pattern.startswith("*"):
            ends.append(pattern[1:])
        else:
            other.append(pattern)
    return frozenset(exact), tuple(starts), tuple(ends), other


def domains(patterns: Iterable[str]) -> Matcher:
    """A matcher for any of the domain globs ``patterns`` (one set look-up and one ``endswith``)."""
    hosts = tuple(dict.fromkeys(pattern.lower().rstrip(".") for pattern in patterns))
    if not hosts:
        return nothing
    if "*" in hosts:
        return _everything
    if len(hosts) == 1:
        return domain_matcher(hosts[0])
    exact = frozenset(host for host in hosts if not host.startswith("*."))
    suffixes = tuple(host[1:] for host in hosts if host.startswith("*."))
    return _combine(exact, (), suffixes, None)


def _alternation(patterns: list[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    parts = (
        "".join(".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern)
        for pattern in patterns
    )
    return re.compile("(?:" + "|".join(parts) + ")", re.DOTALL)


def _combine(
    exact: frozenset[str], prefixes: tuple[str, ...], suffixes: tuple[str, ...], regex: re.Pattern[str] | None
) -> Matcher:
    # One closure per shape, so a call tests only what the patterns need.
    if regex is None and not prefixes and not suffixes:
        return exact.__contains__
    if regex is None and not suffixes:
        return lambda value: value in exact or value.startswith(prefixes)
    if regex is None and not prefixes:
        return lambda value: value in exact or value.endswith(suffixes)
    if regex is None:
        return lambda value: value in exact or value.startswith(prefixes) or value.endswith(suffixes)
    return lambda value: (
        value in exact
        or (bool(prefixes) and value.startswith(prefixes))
        or (bool(suffixes) and value.endswith(suffixes))
        or regex.fullmatch(value) is not None
    )


def normalize_domain(value: str) -> str:
    """The host a request names: lower-cased, without scheme, credentials, port, path or trailing dot.

    Agents pass what they have, often a URL; the policy must see the host it will actually contact.
    """
    # A backslash is a slash to URL parsers that follow the WHATWG standard (browsers, urllib3): read it
    # as one, or `https://evil.com\\@good.com/` would pass for good.com while requests go to evil.com.
    text = value.strip().lower().replace("\\", "/")
    if "/" in text or "@" in text or text.count(":") == 1:
        try:
            host = urlsplit(text if "//" in text else "//" + text).hostname
        except ValueError:
            host = None
        text = host or text
    return text.rstrip(".")


def _everything(_: str) -> bool:
    return True


def nothing(_: str) -> bool:
    """The matcher of an empty pattern list: nothing matches."""
    return False
