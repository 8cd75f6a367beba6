"""core.inference on the demo models: streaming gives what generate gives, and a failure in the
generating thread reaches the caller instead of leaving the Playground waiting forever."""

from __future__ import annotations

import pytest

from core.inference import generate, load_model, stream


@pytest.fixture(scope="module")
def lm(demo_model):
    return load_model("demo")


def test_stream_ends_with_the_text_generate_gives(lm):
    prompt = [{"role": "user", "content": "Who are you?"}]
    pieces = list(stream(lm, prompt, max_new_tokens=24))
    assert pieces, "the stream yielded nothing"
    assert pieces[-1] == generate(lm, prompt, max_new_tokens=24)  # greedy: the same tokens
    assert all(b.startswith(a) for a, b in zip(pieces, pieces[1:])), pieces  # it only grows
    assert len(set(pieces)) == len(pieces)  # no update that changes nothing


def test_stream_of_a_seq2seq_model_matches_generate():
    s2s = load_model("demo-seq2seq", task="summarization")
    text = "summarize: The cat sat on the mat all afternoon."
    pieces = list(stream(s2s, text, max_new_tokens=12))
    assert pieces and pieces[-1] == generate(s2s, text, max_new_tokens=12)


def test_a_failure_while_generating_is_raised_not_hung(lm, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory on the device")

    monkeypatch.setattr(lm.model, "generate", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(stream(lm, "hello", max_new_tokens=8))


def test_a_reader_that_stops_early_stops_the_generation(lm):
    """The Playground closed or cleared mid-answer: the generating thread ends after its next
    token instead of running to max_new_tokens on a busy CPU."""
    import threading
    import time

    before = {t.ident for t in threading.enumerate()}
    pieces = stream(lm, "hello", max_new_tokens=100_000)
    first = next(pieces)
    assert isinstance(first, str)
    t0 = time.perf_counter()
    pieces.close()
    assert time.perf_counter() - t0 < 10
    assert {t.ident for t in threading.enumerate() if t.is_alive()} <= before  # the generating thread ended
