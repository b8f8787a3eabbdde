"""Name and domain globs: what is refused at write time, what matches, and how request domains are read."""

from __future__ import annotations

import fnmatch
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigos.core import globs
from aigos.core.agents import Capabilities

PROPERTY = settings(max_examples=200, deadline=None, database=None)

WILDCARD_ONLY = "may not contain whitespace, control characters, brackets or braces"
NOT_EMPTY = "must be a non-empty string"
LEFTMOST = "a wildcard may only be the whole leftmost label"
TWO_LABELS = "a wildcard must be followed by at least two labels"
BAD_LABEL = "is not a valid host name label"

# -- validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "error"),
    [
        ("*", None),
        ("web_*", None),
        ("*_search", None),
        ("a?c", None),
        ("db/users/*", None),
        ("Read.File+(x)|^$", None),  # regex metacharacters are plain characters
        ("x" * 256, None),
        ("x" * 257, "must be at most 256 characters"),
        ("*a" * 16, None),
        ("*a" * 16 + "*", "may contain at most 16 * wildcards"),
        ("*" * 17, "may contain at most 16 * wildcards"),
        ("", NOT_EMPTY),
        (None, NOT_EMPTY),
        (42, NOT_EMPTY),
        (["web_*"], NOT_EMPTY),
        ("web search", WILDCARD_ONLY),
        ("web\tsearch", WILDCARD_ONLY),
        ("web\nsearch", WILDCARD_ONLY),
        ("web\x00", WILDCARD_ONLY),
        ("web\x7f", WILDCARD_ONLY),
        ("[ab]c", WILDCARD_ONLY),  # fnmatch would read a character class: refused so nothing surprises
        ("a]", WILDCARD_ONLY),
        ("{a,b}", WILDCARD_ONLY),
    ],
)
def test_name_glob_validation(pattern: object, error: str | None) -> None:
    problem = globs.name_glob_error(pattern)
    if error is None:
        assert problem is None
    else:
        assert problem is not None
        assert error in problem


@pytest.mark.parametrize(
    ("pattern", "error"),
    [
        ("*", None),
        ("api.company.com", None),
        ("API.Company.COM", None),
        ("company.com.", None),
        ("*.company.com", None),
        ("*.co.uk", None),
        ("localhost", None),
        ("xn--bcher-kva.example", None),
        ("a-b.c-d.com", None),
        ("1.2.3.4", None),
        ("a" * 63 + ".com", None),
        ("a" * 64 + ".com", BAD_LABEL),
        (".".join(["a" * 60] * 5), "must be at most 253 characters"),
        ("", NOT_EMPTY),
        (None, NOT_EMPTY),
        (7, NOT_EMPTY),
        ("*.com", TWO_LABELS),
        ("*.", TWO_LABELS),
        ("*.*.com", LEFTMOST),
        ("api.*.com", LEFTMOST),
        ("api*.company.com", LEFTMOST),
        ("**.company.com", LEFTMOST),
        ("api.company.*", LEFTMOST),
        ("a?.company.com", LEFTMOST),
        ("a..com", BAD_LABEL),
        ("-api.company.com", BAD_LABEL),
        ("api-.company.com", BAD_LABEL),
        ("under_score.com", BAD_LABEL),
        ("https://api.company.com", BAD_LABEL),
        ("api.company.com:443", BAD_LABEL),
        ("bücher.example", BAD_LABEL),
        ("api company.com", BAD_LABEL),
    ],
)
def test_domain_glob_validation(pattern: object, error: str | None) -> None:
    problem = globs.domain_glob_error(pattern)
    if error is None:
        assert problem is None
    else:
        assert problem is not None
        assert error in problem


# -- matching ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("*", "anything at all", True),
        ("*", "", True),
        ("web_*", "web_search", True),
        ("web_*", "web_", True),
        ("web_*", "web", False),
        ("web_*", "my_web_search", False),
        ("WEB_*", "web_search", True),  # patterns are lower-cased; values are lower-cased by the caller
        ("*_search", "web_search", True),
        ("*_search", "_search", True),
        ("*_search", "web_searches", False),
        ("a?c", "abc", True),
        ("a?c", "a/c", True),
        ("a?c", "ac", False),
        ("a?c", "abbc", False),
        ("a*c", "abbbc", True),
        ("a*c", "abbbd", False),
        ("db/*", "db/users/42", True),  # * crosses /
        ("*/*", "db/users", True),
        ("*/*", "db", False),
        ("read", "read", True),
        ("read", "reader", False),
        ("read", "rea", False),
        ("a.c", "a.c", True),
        ("a.c", "abc", False),  # . is literal
        ("a+", "aa", False),
        ("a+", "a+", True),
        ("(x|y)", "x", False),
        ("(x|y)", "(x|y)", True),
        ("^a$", "^a$", True),
        ("a\\d", "a\\d", True),
        ("a\\d", "a1", False),
        ("*.txt", "notes.txt", True),
        ("*.txt", "notes_txt", False),
        ("?", "\n", True),  # DOTALL: every character counts
        ("*", "line\nbreak", True),
        ("a*b*c", "aXbYc", True),
        ("a*b*c", "acb", False),
    ],
)
def test_name_matching(pattern: str, value: str, matches: bool) -> None:
    assert globs.name_matcher(pattern)(value) is matches


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("*.company.com", "a.company.com", True),
        ("*.company.com", "a.b.company.com", True),
        ("*.company.com", "company.com", False),
        ("*.company.com", "evilcompany.com", False),
        ("*.company.com", "company.com.evil.com", False),
        ("*.company.com", "a.company.com.evil", False),
        ("*.Company.COM", "a.company.com", True),
        ("*.company.com.", "a.company.com", True),
        ("company.com", "company.com", True),
        ("company.com", "a.company.com", False),
        ("company.com", "evilcompany.com", False),
        ("COMPANY.com.", "company.com", True),
        ("*", "anything.example", True),
        ("*", "", True),
        ("api.company.com", "api.company.co", False),
        ("api.company.com", "apixcompany.com", False),  # the dots are not wildcards
    ],
)
def test_domain_matching(pattern: str, value: str, matches: bool) -> None:
    assert globs.domain_matcher(pattern)(value) is matches


def test_any_of_names_and_domains() -> None:
    nothing = globs.names([])
    assert not nothing("")
    assert not nothing("read")
    tools = globs.names(["web_*", "SQL"])
    assert tools("web_fetch")
    assert tools("sql")
    assert not tools("email")
    assert globs.names(["read", "*"])("whatever")
    hosts = globs.domains(["*.company.com", "partner.io"])
    assert hosts("x.company.com")
    assert hosts("partner.io")
    assert not hosts("company.com")
    assert not hosts("x.partner.io")
    assert not globs.domains([])("company.com")


# -- request domains ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        ("api.company.com", "api.company.com"),
        ("API.Company.COM", "api.company.com"),
        ("  api.company.com  ", "api.company.com"),
        ("api.company.com.", "api.company.com"),
        ("api.company.com..", "api.company.com"),
        ("api.company.com:443", "api.company.com"),
        ("api.company.com.:8443", "api.company.com"),
        ("https://api.company.com", "api.company.com"),
        ("https://api.company.com/v1/search?q=x#top", "api.company.com"),
        ("HTTPS://API.Company.COM:8443/path", "api.company.com"),
        ("http://user:secret@api.company.com:8080/x", "api.company.com"),
        ("user@api.company.com", "api.company.com"),
        ("user:secret@api.company.com", "api.company.com"),
        ("evil.com:443@good.com", "good.com"),  # what an HTTP client would contact: the part after @
        ("https://good.com#@evil.com", "good.com"),  # a fragment is not credentials
        ("https://good.com?@evil.com", "good.com"),
        ("api.company.com/path", "api.company.com"),
        ("//api.company.com/path", "api.company.com"),
        ("https://api.company.com./", "api.company.com"),
        ("http://[::1]:8080/", "::1"),
        ("http://127.0.0.1:8080/", "127.0.0.1"),
        ("127.0.0.1:8080", "127.0.0.1"),
    ],
)
def test_normalize_domain(raw: str, host: str) -> None:
    assert globs.normalize_domain(raw) == host


def test_a_backslash_before_the_at_sign_does_not_hide_the_host() -> None:
    assert globs.normalize_domain("https://evil.com\\@good.com/") != "good.com"


# -- properties --------------------------------------------------------------------------------------

# fnmatch reads [...] as a character class, name globs refuse brackets: the alphabet leaves them out.
_ALPHABET = "ab_.*?/+xA"
_patterns = st.text(alphabet=_ALPHABET, min_size=1, max_size=8)
_values = st.text(alphabet="ab_./+xAB*?", max_size=10)


@PROPERTY
@given(pattern=_patterns, value=_values)
def test_name_matcher_agrees_with_fnmatch(pattern: str, value: str) -> None:
    assert globs.name_glob_error(pattern) is None
    assert globs.name_matcher(pattern)(value.lower()) is fnmatch.fnmatchcase(value.lower(), pattern.lower())


_fast_shapes = st.one_of(
    st.text(alphabet="ab_.x/", max_size=6),  # exact
    st.text(alphabet="ab_.x/", max_size=6).map(lambda text: text + "*"),  # prefix
    st.text(alphabet="ab_.x/", max_size=6).map(lambda text: "*" + text),  # suffix
)


def _backtracking(pattern: str, wildcard: str = ".") -> re.Pattern[str]:
    # How globs were matched before: ``*`` as ``.*``, fine on small inputs, O(n^k) for k stars on others.
    parts = (
        ".*" if char == "*" else wildcard if char == "?" else re.escape(char) for char in pattern.lower()
    )
    return re.compile("".join(parts), re.DOTALL)


_small_patterns = st.text(alphabet="ab*?", min_size=1, max_size=8)
_small_names = st.text(alphabet="ab*?", max_size=10)


@PROPERTY
@given(pattern=_small_patterns, value=_small_names)
def test_matching_agrees_with_a_regular_expression(pattern: str, value: str) -> None:
    expected = _backtracking(pattern).fullmatch(value) is not None
    assert globs.name_matcher(pattern)(value) is expected
    assert globs.names([pattern, "zz*z?"])(value) is expected  # the shapes of a list, one by one


@PROPERTY
@given(allowed=_small_patterns, pattern=_small_names)
def test_containment_agrees_with_a_regular_expression(allowed: str, pattern: str) -> None:
    # The containment test as it was: the child pattern read as a name, the parent's ``?`` not a star.
    expected = _backtracking(allowed, "[^*]").fullmatch(pattern.lower()) is not None
    assert globs.covers(allowed, pattern) is expected


@PROPERTY
@given(allowed=_small_patterns, pattern=_small_patterns, value=_small_names)
def test_a_covered_pattern_matches_only_names_its_container_matches(
    allowed: str, pattern: str, value: str
) -> None:
    if globs.covers(allowed, pattern) and globs.name_matcher(pattern)(value):
        assert globs.name_matcher(allowed)(value)


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("*a*a*a*a*b", "a" * 250, False),
        ("*a*a*a*a*b", "a" * 249 + "b", True),
        ("*a*a*a*a*b", "b" + "a" * 250, False),
        ("*a" * 16, "a" * 10_000, True),
        ("*a" * 15 + "*b", "a" * 10_000, False),
        ("*a" * 15 + "*b", "a" * 9_999 + "b", True),
        ("*a?" * 15 + "*b", "a" * 10_000, False),
        ("*a?" * 15 + "*b", "a" * 9_999 + "b", True),
        ("*" + "?" * 200 + "b*", "a" * 10_000, False),
        ("a*" + "a" * 120 + "b*" + "a" * 120, "a" * 10_000, False),
        ("a*" + "a" * 120 + "b*" + "a" * 120, "a" * 5_000 + "b" + "a" * 5_000, True),
    ],
)
def test_adversarial_patterns_answer_right(pattern: str, value: str, matches: bool) -> None:
    # A backtracking expression takes O(n^k) steps on these (minutes to forever); the part-by-part
    # matcher answers at once.
    assert globs.name_glob_error(pattern) is None
    assert globs.name_matcher(pattern)(value) is matches
    assert globs.names([pattern, "other*x"])(value) is matches


@pytest.mark.parametrize(
    ("allowed", "pattern", "covered"),
    [
        ("*a*a*a*a*b", "a" * 250, False),
        ("*a*a*a*a*b", "a" * 99 + "*b", True),
        ("*a" * 15 + "*b", "a" * 100, False),
        ("*a?" * 15 + "*b", "a*" * 49 + "b", False),
        ("*a?" * 15 + "*b", "a?" * 49 + "b", True),
        ("web_*", "web_*", True),
        ("web_*", "web_?", True),
        ("web_?", "web_*", False),
        ("web_?", "web_?", True),
        ("calc", "calc?", False),
        ("*.example.com", "*.b.example.com", True),
        ("*.example.com", "example.com", False),
    ],
)
def test_containment(allowed: str, pattern: str, covered: bool) -> None:
    # As token exchange asks it: is the child's capability within the parent's?
    parent, child = Capabilities(tools=(allowed,)), Capabilities(tools=(pattern,))
    assert (parent.covers(child) == []) is covered
    assert globs.covers(allowed, pattern) is covered


@PROPERTY
@given(patterns=st.lists(_patterns, min_size=1, max_size=3), value=_values)
def test_prefixes_stand_in_for_the_matcher_when_given(patterns: list[str], value: str) -> None:
    found = globs.prefixes(patterns)
    collapsed = [re.sub(r"\*+", "*", p) for p in patterns]  # a run of stars is one star
    every_prefix = all(p.endswith("*") and p.count("*") == 1 and "?" not in p and p != "*" for p in collapsed)
    assert (found is not None) is every_prefix
    if found is not None:
        assert value.lower().startswith(found) is globs.names(patterns)(value.lower())


_labels = st.text(alphabet="abc-1", min_size=1, max_size=4).filter(
    lambda label: not label.startswith("-") and not label.endswith("-")
)
_hosts = st.lists(_labels, min_size=1, max_size=4).map(".".join)


@PROPERTY
@given(base=st.lists(_labels, min_size=2, max_size=3).map(".".join), host=_hosts)
def test_a_wildcard_domain_matches_strictly_below_its_base(base: str, host: str) -> None:
    pattern = "*." + base
    assert globs.domain_glob_error(pattern) is None
    expected = host.endswith("." + base)
    assert globs.domain_matcher(pattern)(host) is expected
    assert globs.domain_matcher(pattern)(base) is False
    assert globs.domain_matcher(base)(host) is (host == base)


@PROPERTY
@given(
    host=_hosts,
    scheme=st.sampled_from(["", "http://", "https://", "HTTPS://", "//"]),
    userinfo=st.sampled_from(["", "user@", "user:pw@"]),
    port=st.sampled_from(["", ":443", ":8080"]),
    path=st.sampled_from(["", "/", "/a/b?q=1", "/x#frag"]),
    dot=st.sampled_from(["", "."]),
)
def test_normalize_domain_finds_the_host_in_any_url(
    host: str, scheme: str, userinfo: str, port: str, path: str, dot: str
) -> None:
    raw = f"{scheme}{userinfo}{host.upper()}{dot}{port}{path}"
    assert globs.normalize_domain(raw) == host
