"""The hot GET's access line is the line ``AccessLog.write`` makes of ``_log``'s message.

:meth:`HotGet.answer <sipcert.server.hotget.HotGet.answer>` formats its line with ``%`` and
hands it to :meth:`AccessLog.write_escaped`, escaping only the peer (issue 13); these check
that this is byte for byte what the general path writes, for any peer text.
"""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from sipcert.proto.logsafe import log_safe
from sipcert.server.app import AccessLog
from sipcert.server.hotget import _ACCESS_LINE, SEARCH_PATH

_SECONDS = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
_QUERIES = st.from_regex(
    r"(email|sip|uri)=[A-Za-z0-9._-]{1,12}%40[A-Za-z0-9.-]{1,16}", fullmatch=True
)


@given(seconds=_SECONDS)
def test_percent_f_is_the_six_digit_format_for_elapsed_times(seconds: float) -> None:
    assert "%f" % seconds == f"{seconds:06f}"  # noqa: UP031


def _lines(write: str, message: str) -> str:
    stream = io.StringIO()
    sink = AccessLog(stream, clock=lambda: 1_764_633_600.25)
    getattr(sink, write)(message)
    sink.close()
    return stream.getvalue()


@given(
    remote=st.one_of(st.sampled_from(["127.0.0.1", "::1", "fe80::1%eth0"]), st.text(max_size=12)),
    method=st.sampled_from(["GET", "HEAD"]),
    query=_QUERIES,
    status=st.sampled_from([200, 304, 404]),
    size=st.integers(min_value=0, max_value=10**7),
    seconds=_SECONDS,
)
def test_the_hot_line_is_the_general_paths_line(
    remote: str, method: str, query: str, status: int, size: int, seconds: float
) -> None:
    general = f'{remote} "{method} {SEARCH_PATH}?{query} HTTP/1.1" {status} {size} {seconds:06f}'
    hot = _ACCESS_LINE % (log_safe(remote), method, query, status, size, seconds)
    assert _lines("write_escaped", hot) == _lines("write", general)
