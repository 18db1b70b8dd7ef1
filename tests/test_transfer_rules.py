"""The rules of one download, fed answers and byte counts directly: no sockets, no clock.

Every rule the HTTP stack enforces on what a server says is here as a table row; the loopback
tests (test_fetch_transfer.py) show the stack wires each kind of decision to the network.
"""

from __future__ import annotations

import pytest

from sysupd.core.transfer import (
    Accept,
    Fault,
    ProgressPace,
    RateWatch,
    Redirect,
    Refuse,
    Resume,
    Skip,
    Tolerance,
    TransferRules,
)

SIZE = 1000
FIRST = {"Content-Length": str(SIZE), "ETag": '"v1"', "Accept-Ranges": "bytes"}


def rules(
    *, max_bytes: int | None = None, max_redirects: int = 3, resume_tries: int = 3
) -> TransferRules:
    return TransferRules(
        "/file", max_bytes=max_bytes, max_redirects=max_redirects, resume_tries=resume_tries
    )


def dropped_at(offset: int, first: dict[str, str] = FIRST, **kw: int) -> TransferRules:
    """Rules that took a first answer with ``first``, handed out ``offset`` bytes and dropped."""
    state = rules(**kw)
    assert not isinstance(state.answer(200, first), Refuse)
    assert state.take(offset) is None
    assert isinstance(state.dropped("the connection broke"), Resume)
    return state


def refused(decision: object, reason: str, fault: Fault = Fault.TRANSFER) -> None:
    assert isinstance(decision, Refuse), decision
    assert decision.reason == reason
    assert decision.fault is fault


# -- the first answer -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, {"Content-Length": "1000"}, Accept(1000)),
        (200, {"content-length": " 1000 "}, Accept(1000)),
        (200, {}, Accept(None)),
        (200, {"Content-Length": "12, 12"}, Accept(None)),
        (200, {"Content-Length": "1000", "Content-Encoding": "identity"}, Accept(1000)),
    ],
)
def test_a_first_answer_is_taken(status: int, headers: dict[str, str], expected: Accept) -> None:
    assert rules().answer(status, headers) == expected


@pytest.mark.parametrize(
    ("status", "headers", "reason", "fault"),
    [
        (404, {}, "the server answered 404 Not Found for /file", Fault.STATUS),
        (403, {}, "the server answered 403 Forbidden for /file", Fault.STATUS),
        (503, {}, "the server answered 503 Service Unavailable for /file", Fault.STATUS),
        (599, {}, "the server answered 599 for /file", Fault.STATUS),
        (304, {}, "the server answered 304 Not Modified for /file", Fault.STATUS),
        (204, {}, "the server answered 204 No Content for /file", Fault.TRANSFER),
        (
            206,
            {"Content-Range": "bytes 0-9/10"},
            "the server sent part of /file unasked",
            Fault.TRANSFER,
        ),
        (
            200,
            {"Content-Encoding": "gzip"},
            "the server sent /file with content coding gzip",
            Fault.TRANSFER,
        ),
        (
            200,
            {"CONTENT-ENCODING": "br"},
            "the server sent /file with content coding br",
            Fault.TRANSFER,
        ),
    ],
)
def test_a_first_answer_is_refused(
    status: int, headers: dict[str, str], reason: str, fault: Fault
) -> None:
    refused(rules().answer(status, headers), reason, fault)


def test_an_error_status_is_given_with_the_refusal() -> None:
    decision = rules().answer(500, {})
    assert isinstance(decision, Refuse)
    assert decision.status == 500


def test_an_announced_size_over_the_cap_is_refused_before_the_body() -> None:
    refused(
        rules(max_bytes=999).answer(200, {"Content-Length": "1000"}),
        "/file is 1000 bytes, more than the limit of 999 bytes",
        Fault.LENGTH,
    )
    assert rules(max_bytes=1000).answer(200, {"Content-Length": "1000"}) == Accept(1000)
    signed = TransferRules(
        "/p", max_bytes=10, max_redirects=0, resume_tries=0, limit_name="its signed length"
    )
    refused(
        signed.answer(200, {"Content-Length": "11"}),
        "/p is 11 bytes, more than its signed length of 10 bytes",
        Fault.LENGTH,
    )


# -- redirects ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_names_its_location(status: int) -> None:
    assert rules().answer(status, {"location": "/elsewhere"}) == Redirect("/elsewhere")


def test_a_redirect_without_a_location_is_refused() -> None:
    refused(rules().answer(302, {}), "the server answered 302 Found for /file without a Location")
    refused(
        rules().answer(301, {"Location": ""}),
        "the server answered 301 Moved Permanently for /file without a Location",
    )


def test_redirects_are_counted_per_request() -> None:
    state = rules(max_redirects=2)
    assert state.answer(302, {"Location": "/a"}) == Redirect("/a")
    state.redirected_to("/a")
    assert state.answer(302, {"Location": "/b"}) == Redirect("/b")
    state.redirected_to("/b")
    refused(state.answer(302, {"Location": "/c"}), "the server redirected /b more than 2 times")
    again = rules(max_redirects=1)
    assert isinstance(again.answer(302, {"Location": "/file"}), Redirect)
    assert again.answer(200, FIRST) == Accept(SIZE)
    assert again.take(10) is None
    assert isinstance(again.dropped("broke"), Resume)
    assert isinstance(again.answer(307, {"Location": "/file"}), Redirect)  # a fresh count


def test_no_redirects_allowed() -> None:
    refused(
        rules(max_redirects=0).answer(308, {"Location": "/x"}),
        "the server redirected /file more than 0 times",
    )


# -- the body -------------------------------------------------------------------------------------


def test_never_more_than_the_cap_is_handed_out() -> None:
    state = rules(max_bytes=100)
    assert state.answer(200, {}) == Accept(None)
    assert state.take(60) is None
    refused(state.take(41), "/file is longer than the limit of 100 bytes", Fault.LENGTH)
    assert state.received == 60
    assert state.take(40) is None
    assert state.received == 100


def test_never_more_than_the_announced_size_is_handed_out() -> None:
    state = rules()
    assert state.answer(200, {"Content-Length": "10"}) == Accept(10)
    refused(state.take(11), "the server sent more of /file than the 10 bytes it announced")


def test_the_end_of_the_body() -> None:
    state = rules()
    state.answer(200, {"Content-Length": "10"})
    state.take(4)
    assert state.ended() == "the connection ended after 4 of 10 bytes of /file"
    state.take(6)
    assert state.ended() is None
    unknown = rules()
    unknown.answer(200, {})
    unknown.take(3)
    assert unknown.ended() is None


# -- resuming -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "sent"),
    [
        (FIRST, {"Range": "bytes=400-", "If-Range": '"v1"'}),
        ({"Accept-Ranges": "bytes"}, {"Range": "bytes=400-"}),
        (
            {"Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT"},
            {"Range": "bytes=400-", "If-Range": "Tue, 01 Dec 2026 10:00:00 GMT"},
        ),
        ({"ETag": 'W/"weak"', "Last-Modified": "Tue"}, {"Range": "bytes=400-", "If-Range": "Tue"}),
        ({"ETag": 'W/"weak"'}, {"Range": "bytes=400-"}),
    ],
)
def test_a_drop_asks_for_the_rest_with_range_and_if_range(
    first: dict[str, str], sent: dict[str, str]
) -> None:
    state = rules()
    state.answer(200, first)
    state.take(400)
    assert state.dropped("broke") == Resume(400, sent)


def test_a_drop_without_a_way_to_resume_is_refused() -> None:
    state = rules()
    state.answer(200, {"Content-Length": "1000"})
    state.take(10)
    refused(state.dropped("it broke"), "it broke; the server offers no way to resume")


def test_resumes_are_limited() -> None:
    state = dropped_at(100, resume_tries=2)
    assert isinstance(state.dropped("again"), Resume)
    refused(state.dropped("and again"), "and again; gave up after 2 of 2 allowed resumes")
    none = rules(resume_tries=0)
    none.answer(200, FIRST)
    refused(none.dropped("broke"), "broke; gave up after 0 of 0 allowed resumes")


def test_a_partial_answer_at_the_next_byte_is_taken() -> None:
    headers = {"Content-Range": "bytes 400-999/1000", "ETag": '"v1"'}
    assert dropped_at(400).answer(206, headers) == Accept(SIZE)
    state = dropped_at(400, {"Accept-Ranges": "bytes"})  # the first answer had no length
    assert state.answer(206, {"Content-Range": "bytes 400-999/1000"}) == Accept(1000)
    assert state.size == 1000


CHANGED = "the file changed on the server during the download of /file"
NO_RANGE = "the server's partial answer for /file has no usable range"


@pytest.mark.parametrize(
    ("content_range", "etag", "reason"),
    [
        ("bytes 300-999/1000", '"v1"', "the server resumed /file at byte 300 instead of byte 400"),
        ("bytes 0-999/1000", '"v1"', "the server resumed /file at byte 0 instead of byte 400"),
        ("", '"v1"', NO_RANGE),
        ("bytes 400-/1000", '"v1"', NO_RANGE),
        ("items 400-999/1000", '"v1"', NO_RANGE),
        ("bytes 400-300/1000", '"v1"', NO_RANGE),
        ("bytes 400-1000/1000", '"v1"', NO_RANGE),
        ("bytes 400-1999/2000", '"v1"', CHANGED),
        ("bytes 400-999/*", '"v1"', CHANGED),
        ("bytes 400-999/1000", '"v2"', CHANGED),
    ],
)
def test_a_partial_answer_that_does_not_fit_is_refused(
    content_range: str, etag: str, reason: str
) -> None:
    refused(dropped_at(400).answer(206, {"Content-Range": content_range, "ETag": etag}), reason)


def test_the_whole_file_again_is_skipped_to_the_next_byte_if_it_is_the_same() -> None:
    assert dropped_at(400).answer(200, FIRST) == Skip(400, SIZE)
    by_date = {"Last-Modified": "Tue", "Content-Length": "1000"}
    assert dropped_at(400, by_date).answer(200, by_date) == Skip(400, SIZE)
    unsized = dropped_at(400, {"ETag": '"v1"'})
    assert unsized.answer(200, {"ETag": '"v1"', "Content-Length": "1000"}) == Skip(400, SIZE)
    assert unsized.size == SIZE


@pytest.mark.parametrize(
    ("first", "again"),
    [
        (FIRST, {**FIRST, "ETag": '"v2"'}),
        (FIRST, {**FIRST, "Content-Length": "1001"}),
        (FIRST, {"Content-Length": "1000", "Accept-Ranges": "bytes"}),
        ({"Last-Modified": "Tue"}, {"Last-Modified": "Wed"}),
        ({"ETag": '"v1"', "Last-Modified": "Tue"}, {"ETag": '"v1"', "Last-Modified": "Wed"}),
        ({"Accept-Ranges": "bytes"}, {"Accept-Ranges": "bytes"}),  # nothing shows it is the same
    ],
)
def test_the_whole_file_again_is_refused_if_it_may_have_changed(
    first: dict[str, str], again: dict[str, str]
) -> None:
    refused(dropped_at(400, first).answer(200, again), CHANGED)


def test_a_resume_answer_is_held_to_the_first_answers_rules() -> None:
    refused(
        dropped_at(400).answer(200, {**FIRST, "Content-Encoding": "gzip"}),
        "the server sent /file with content coding gzip",
    )
    refused(
        dropped_at(400).answer(416, {}),
        "the server answered 416 Requested Range Not Satisfiable for /file",
        Fault.STATUS,
    )


# -- time and progress ----------------------------------------------------------------------------


def test_the_rate_is_judged_over_full_windows_of_network_time() -> None:
    watch = RateWatch(window_s=10, min_bps=100)
    assert not watch.stalled(5, 0)  # not a full window yet
    assert not watch.stalled(10, 1000)
    assert not watch.stalled(20, 2000)
    assert watch.stalled(30, 2500)  # 500 bytes in the last 10 s


def test_progress_is_due_every_mib_or_second_and_at_the_end() -> None:
    pace = ProgressPace(0.0, every_bytes=100, every_s=1.0)
    assert not pace.due(50, 0.5)
    assert pace.due(100, 0.6)
    assert not pace.due(150, 0.7)
    assert pace.due(160, 1.7)
    assert pace.due(161, 1.71, final=True)


# -- a lenient policy (a LAN URL) ------------------------------------------------------------

LENIENT = Tolerance(name_paths=False, blind_resume=True, pass_codings=True, first_partial=True)


def lenient() -> TransferRules:
    return TransferRules(
        "/secret-token/file", max_bytes=SIZE, max_redirects=3, resume_tries=3, tolerance=LENIENT
    )


def test_a_lenient_policy_never_names_the_path() -> None:
    refused(lenient().answer(404, {}), "the server answered 404 Not Found", Fault.STATUS)
    refused(lenient().answer(302, {}), "the server answered 302 Found without a Location")
    big = {"Content-Length": str(SIZE + 1)}
    refused(
        lenient().answer(200, big),
        f"the file is {SIZE + 1} bytes, more than the limit of {SIZE} bytes",
        Fault.LENGTH,
    )
    state = lenient()
    assert state.answer(200, {"Content-Length": "10"}) == Accept(10)
    assert state.take(4) is None
    assert state.ended() == "the connection ended after 4 of 10 bytes"


def test_a_lenient_policy_resumes_without_validators_and_skips_a_same_size_200() -> None:
    state = lenient()
    assert state.answer(200, {"Content-Length": str(SIZE)}) == Accept(SIZE)
    assert state.take(400) is None
    assert state.dropped("the connection broke") == Resume(400, {"Range": "bytes=400-"})
    assert state.answer(200, {"Content-Length": str(SIZE)}) == Skip(400, SIZE)
    state.dropped("the connection broke")
    refused(
        state.answer(200, {"Content-Length": str(SIZE - 1)}),
        "the file changed on the server during the download",
    )


def test_a_strict_policy_does_not_resume_without_validators() -> None:
    state = rules()
    assert state.answer(200, {"Content-Length": str(SIZE)}) == Accept(SIZE)
    refused(state.dropped("it broke"), "it broke; the server offers no way to resume")


def test_a_lenient_policy_passes_codings_and_a_first_partial_answer() -> None:
    coded = {"Content-Length": "10", "Content-Encoding": "gzip"}
    assert lenient().answer(200, coded) == Accept(10)
    whole = {"Content-Range": f"bytes 0-{SIZE - 1}/{SIZE}", "Content-Length": str(SIZE)}
    assert lenient().answer(206, whole) == Accept(SIZE)
    refused(
        lenient().answer(206, {"Content-Range": f"bytes 5-{SIZE - 1}/{SIZE}"}),
        "the server resumed at byte 5 instead of byte 0",
    )
    refused(rules().answer(206, whole), "the server sent part of /file unasked")
