"""peertext: whatever a peer sends, what we show of it is one bounded, unambiguous line."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunnel.protocol.peertext import NAME_LIMIT, quoted, shown


def test_plain_text_is_shown_as_it_is() -> None:
    assert shown("redis-cache_01 on host b") == "redis-cache_01 on host b"


def test_line_breaks_controls_and_format_characters_are_escaped() -> None:
    text = "a\nb\rc\td\x1b[2Je\u2028f\u202eg\x00h\\i"
    assert shown(text) == "a\\nb\\rc\\td\\x1b[2Je\\u2028f\\u202eg\\x00h\\\\i"


def test_long_text_is_cut_and_says_how_much_was_left_out() -> None:
    assert shown("x" * 1000, 10) == "x" * 10 + "...(+990 chars)"


def test_quoted_escapes_its_quotes() -> None:
    assert quoted("it's") == "'it\\'s'"


@given(st.text(max_size=2000), st.integers(min_value=1, max_value=300))
def test_any_text_becomes_one_bounded_printable_line(text: str, limit: int) -> None:
    out = shown(text, limit)
    assert out.isprintable()
    # Each kept character takes at most 10 (\U0010ffff); the cut note is short.
    assert len(out) <= 10 * limit + 30
    assert len(quoted(text)) <= 10 * NAME_LIMIT + 40
