"""ratelimit.RateLimit: at most one message per interval and key, held-back messages counted, reset()."""
import logging

from imds_flow.ratelimit import RateLimit


def test_one_message_per_interval_and_key_with_the_held_back_count(caplog):
    t = [0.0]
    limit = RateLimit(10.0, clock=lambda: t[0])
    with caplog.at_level(logging.WARNING, logger="imds_flow"):
        for _ in range(5):                               # at 0, 4, 8, 12, 16 s
            limit.log(logging.WARNING, "sink %s down", "a")
            t[0] += 4.0
    assert [r.getMessage() for r in caplog.records] == ["sink a down", "sink a down (2 similar message(s) held back)"]
    assert limit.due("x", now=0.0) and limit.due("y", now=0.0) and not limit.due("x", now=9.9)
    assert limit.due("x", now=10.0)


def test_reset_lets_the_next_message_out_at_once():
    limit = RateLimit(30.0, clock=lambda: 100.0)
    assert limit.due() and not limit.due()
    limit.reset()
    assert limit.due()
