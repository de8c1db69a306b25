"""`SSEDecoder`: the one reader of server-sent events (model streams, the client's streams)."""

from __future__ import annotations

from corral._sse import ServerSentEvent, SSEDecoder


def test_the_decoder_follows_the_spec_across_reads() -> None:
    wire = (
        b": a comment\r\n"
        b'data: {"a": 1}\r\n\r\n'
        b"event: error\rdata: line one\rdata:line two\r\r"
        b"id: 7\nretry: 10\ndata: caf\xc3\xa9\n\n"
        b"data: [DONE]"
    )
    want = [
        ServerSentEvent("message", '{"a": 1}'),
        ServerSentEvent("error", "line one\nline two"),
        ServerSentEvent("message", "café", "7"),
    ]
    # Whole, and cut at every byte (a CRLF and a UTF-8 character split between reads included).
    for cut in range(len(wire) + 1):
        decoder = SSEDecoder()
        got = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:])
        assert got == want, cut
        # The stream ended without the last blank line: `close()` still gives the last event.
        assert decoder.close() == [ServerSentEvent("message", "[DONE]")]


def test_fields_belong_to_their_event() -> None:
    decoder = SSEDecoder()
    # A field with no data dispatches nothing (a blank line alone neither); an id or a type
    # does not carry over to the next event.
    assert decoder.feed(b"event: x\nid: 1\n\n\n") == []
    assert decoder.feed(b"data: a\n\n") == [ServerSentEvent("message", "a")]
    assert decoder.feed(b"id: 2\nevent: done\ndata: b\n\n") == [ServerSentEvent("done", "b", "2")]
