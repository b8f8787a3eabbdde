"""Name and domain patterns: validated when a policy is written, compiled once, matched in nanoseconds.

Two kinds, both case-insensitive:

- **name globs** (tools, actions, resources): ``*`` stands for any run of characters (``/`` included), ``?``
  for one character; anything else for itself. ``web_*`` matches ``web_search``.
- **domain globs**: a host name (``api.company.com``), ``*`` for every host, or ``*.company.com`` for every
  host *under* ``company.com`` (not ``company.com`` itself, as in TLS certificates and the AIGRC spec). A
  wildcard anywhere else is refused at write time, so a pattern means what it looks like.

A matcher is a plain callable on an already lower-cased value; the common shapes (everything, exact,
prefix, suffix, infix) are one C-level string test. Every other glob is matched part by part (``_glob``),
never by a backtracking regular expression: ``*a*a*a*a*b`` against 250 ``a`` would take such an expression
O(n^4) steps, seconds on the event loop. A pattern is also bounded at write time: at most ``MAX_PATTERN``
characters and ``MAX_STARS`` stars.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

Matcher = Callable[[str], bool]

MAX_PATTERN = 256
#: Stars per name glob: more say nothing a person means, and each is one more search in every match.
MAX_STARS = 16
_FORBIDDEN = re.compile(r"[\s\[\]{}\x00-\x1f\x7f]")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def name_glob_error(pattern: object) -> str | None:
    """Why ``pattern`` is not a valid name glob, or ``None`` when it is."""
    if not isinstance(pattern, str) or not pattern:
        return "must be a non-empty string"
    if len(pattern) > MAX_PATTERN:
        return f"must be at most {MAX_PATTERN} characters"
    if pattern.count("*") > MAX_STARS:
        return f"may contain at most {MAX_STARS} * wildcards"
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
    """A matcher for a (valid) name glob; call it with a lower-cased name.

    It runs in time linear in the name for each literal part of the pattern, whatever the number of stars:
    no regular expression backtracks over ``*`` (see ``_segments``).
    """
    return _glob(_canonical(pattern.lower()), _ANY_NAME)


def covers(allowed: str, pattern: str) -> bool:
    """Whether every name the glob ``pattern`` matches is matched by the glob ``allowed`` too.

    ``pattern`` is read as a name in which ``allowed``'s ``*`` stands for any run of characters, wildcards
    included, and its ``?`` for one character that is not ``*`` (a ``?`` of ``pattern`` is one character
    too); anything else only for itself. Matching ``pattern`` as a plain name would let ``a?`` cover ``a*``
    (``?`` matches the character ``*``). Sound though not complete (``??*`` does not cover ``*??``), and
    like matching linear per literal part: the time is bounded by the product of the two lengths.
    """
    return _container(allowed.lower())(_canonical(pattern.lower()))


@functools.lru_cache(maxsize=4096)
def _container(lowered: str) -> Matcher:
    # ``covers``'s matcher of the allowed pattern, compiled once per pattern.
    return _glob(_canonical(lowered), _ANY_NOT_STAR)


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
    patterns one ``str.endswith(tuple)``, and the rest are tried one by one: a rule with ten prefix
    patterns costs about what a rule with one does.
    """
    lowered = tuple(dict.fromkeys(_canonical(pattern.lower()) for pattern in patterns))
    if not lowered:
        return nothing
    if "*" in lowered:
        return _everything
    if len(lowered) == 1:
        return name_matcher(lowered[0])
    exact, starts, ends, other = _shapes(lowered)
    return _combine(exact, starts, ends, tuple(name_matcher(pattern) for pattern in other))


def prefixes(patterns: Iterable[str]) -> tuple[str, ...] | None:
    """The literal prefixes when every name glob in ``patterns`` is ``prefix*`` (else ``None``).

    A caller in a hot loop tests ``value.startswith(prefixes)`` inline: one C call, no Python frame and
    fewer objects to fetch from memory than a matcher's closure.
    """
    lowered = tuple(dict.fromkeys(_canonical(pattern.lower()) for pattern in patterns))
    if not lowered or "*" in lowered:
        return None
    exact, starts, ends, other = _shapes(lowered)
    return None if exact or ends or other else starts


def _shapes(
    lowered: tuple[str, ...],
) -> tuple[frozenset[str], tuple[str, ...], tuple[str, ...], list[str]]:
    # Exact names, ``prefix*`` prefixes, ``*suffix`` suffixes, and the patterns matched one by one.
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
    return _combine(exact, (), suffixes, ())


def _combine(
    exact: frozenset[str], prefixes: tuple[str, ...], suffixes: tuple[str, ...], others: tuple[Matcher, ...]
) -> Matcher:
    # One closure per shape, so a call tests only what the patterns need.
    if not others and not prefixes and not suffixes:
        return exact.__contains__
    if not others and not suffixes:
        return lambda value: value in exact or value.startswith(prefixes)
    if not others and not prefixes:
        return lambda value: value in exact or value.endswith(suffixes)
    if not others:
        return lambda value: value in exact or value.startswith(prefixes) or value.endswith(suffixes)
    return lambda value: (
        value in exact
        or (bool(prefixes) and value.startswith(prefixes))
        or (bool(suffixes) and value.endswith(suffixes))
        or any(match(value) for match in others)
    )


# -- matching a glob part by part ----------------------------------------------------------------------

#: What a ``?`` stands for, as a regular-expression class: any character in a name; in a pattern read as a
#: name (``covers``), any character but ``*``.
_ANY_NAME = "."
_ANY_NOT_STAR = "[^*]"
_STARS = re.compile(r"\*{2,}")


def _canonical(lowered: str) -> str:
    """``lowered`` with each run of stars as one star: ``a**b`` matches what ``a*b`` does, and the fast
    shapes and ``covers`` see that (a run of stars in a pattern read as a name meets one star run only)."""
    return _STARS.sub("*", lowered) if "**" in lowered else lowered


#: A literal part of a glob (between stars): its text when it has no ``?``, else a regular expression
#: without alternatives or open repetition (``?`` is one character, a run of them a fixed count), so
#: ``match`` and ``search`` never backtrack: at most O(len(name) x len(part)) steps, in C.
_Part = tuple[str, re.Pattern[str] | None, int]


def _part(text: str, any_char: str) -> _Part:
    if "?" not in text:
        return (text, None, len(text))
    pieces = []
    for run in re.split(r"(\?+)", text):
        if run.startswith("?"):
            pieces.append(any_char if len(run) == 1 else f"{any_char}{{{len(run)}}}")
        elif run:
            pieces.append(re.escape(run))
    return (text, re.compile("".join(pieces), re.DOTALL), len(text))


def _glob(lowered: str, any_char: str) -> Matcher:
    """A matcher for the canonical glob ``lowered``: the common shapes first, else part by part."""
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
        if stars == 1:
            head, tail = lowered.split("*")
            least = len(head) + len(tail)
            return lambda value: len(value) >= least and value.startswith(head) and value.endswith(tail)
        if stars == 2 and lowered.startswith("*") and lowered.endswith("*"):
            infix = lowered[1:-1]
            return lambda value: infix in value
    return _segments(lowered, any_char)


def _segments(lowered: str, any_char: str) -> Matcher:
    """Match ``lowered`` part by part: the first part at the start, the last at the end, and each part
    between at its leftmost place after the one before.

    Leftmost is always right for stars: a part placed earlier leaves the parts after it more room. Each
    part is searched once, so the time is linear in the name per part, never a power of it.
    """
    texts = lowered.split("*")
    if len(texts) == 1:
        _, whole, size = _part(lowered, any_char)
        assert whole is not None  # no star and not exact: it has a ``?``
        return lambda value: len(value) == size and whole.fullmatch(value) is not None
    head, tail = _part(texts[0], any_char), _part(texts[-1], any_char)
    middle = tuple(_part(text, any_char) for text in texts[1:-1] if text)
    least = head[2] + tail[2] + sum(part[2] for part in middle)

    def match(value: str) -> bool:
        if len(value) < least or not _at(head, value, 0):
            return False
        end = len(value) - tail[2]
        if not _at(tail, value, end):
            return False
        position = head[2]
        for text, regex, size in middle:
            if regex is None:
                found = value.find(text, position, end)
            else:
                hit = regex.search(value, position, end)
                found = -1 if hit is None else hit.start()
            if found < 0:
                return False
            position = found + size
        return True

    return match


def _at(part: _Part, value: str, position: int) -> bool:
    """Whether ``part`` matches ``value`` at ``position`` (the caller knows it fits)."""
    text, regex, size = part
    if regex is None:
        return value.startswith(text, position)
    return regex.match(value, position, position + size) is not None


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
