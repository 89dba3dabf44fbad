"""The process a participant's function runs in under `evaluate --test`, and its messages.

    python -m emergence_model.harness.worker    (started by runs.py, never by hand)

The host (runs.py) writes to the worker's stdin and reads its stdout, in frames: an 8-byte
length, then the bytes. First a JSON hello (the entry, the import path, the small models' names,
the target's name); the worker loads the function and answers {"ready": true} or {"error":
REASON}. Then, per batch, a JSON header ({"sentences": [...], "shape": [n, M - 1, V]}) and the
float16 probabilities' raw bytes; the worker answers {"guesses": [...], "seconds": s,
"peak_bytes": b} or {"error": REASON} and stops. An empty JSON object ends the run.

The host reads nothing from the worker but lengths, JSON and integers, so a hostile function
cannot make it run code (no pickle crosses back). The function's own prints go to stderr: stdout
is the host's channel, and stdin is /dev/null to it.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import BinaryIO

import numpy as np

from emergence_model.harness.entries import EntryError, call_entry, load_function, parse_spec

LENGTH = struct.Struct(">Q")


class ChannelClosed(Exception):
    """The other side closed the channel (or was killed) before a whole frame arrived."""


def write_frame(stream: BinaryIO, payload: bytes | bytearray | memoryview) -> None:
    stream.write(LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def read_frame(stream: BinaryIO, limit: int | None = None) -> bytearray:
    """One frame's bytes; ChannelClosed at the end of the stream, ValueError past `limit`."""
    (size,) = LENGTH.unpack(_read_exactly(stream, LENGTH.size))
    if limit is not None and size > limit:
        raise ValueError(f"sent a message of {size} bytes, more than the {limit} expected")
    return _read_exactly(stream, size)


def _read_exactly(stream: BinaryIO, size: int) -> bytearray:
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        n = stream.readinto(view[got:])
        if not n:
            raise ChannelClosed(f"the channel closed after {got} of {size} bytes")
        got += n
    return data


def write_json(stream: BinaryIO, message: dict) -> None:
    write_frame(stream, json.dumps(message).encode())


def read_json(stream: BinaryIO, limit: int | None = None) -> dict:
    message = json.loads(read_frame(stream, limit))
    if not isinstance(message, dict):
        raise ValueError(f"sent {type(message).__name__} where a JSON object was expected")
    return message


def serve(channel_in: BinaryIO, channel_out: BinaryIO) -> None:
    """Load the function the hello names, then answer every batch until the host says stop."""
    hello = read_json(channel_in)
    sys.path[:] = hello["sys_path"]
    try:
        function = load_function(parse_spec(hello["spec"]))
    except (EntryError, ValueError) as e:
        write_json(channel_out, {"error": str(e)})
        return
    write_json(channel_out, {"ready": True})
    while True:
        header = read_json(channel_in)
        if not header:
            return
        # A bytearray, so that the array is writable as any other call's is.
        data = read_frame(channel_in)
        probs = np.frombuffer(data, dtype=np.float16).reshape(header["shape"])
        try:
            guesses, seconds, peak = call_entry(
                function, header["sentences"], hello["model_names"], hello["target_name"], probs
            )
        except EntryError as e:
            write_json(channel_out, {"error": str(e)})
            return
        answer = {"guesses": guesses.tolist(), "seconds": seconds, "peak_bytes": peak}
        write_json(channel_out, answer)


def main() -> None:
    # The channel gets descriptors of its own; the function's stdout goes to stderr and its
    # stdin reads nothing, so neither can touch the channel.
    channel_in = os.fdopen(os.dup(0), "rb")
    channel_out = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    try:
        serve(channel_in, channel_out)
    except (ChannelClosed, BrokenPipeError):
        pass  # the host stopped listening (it gave up on this entry): nothing to tell it


if __name__ == "__main__":
    main()
