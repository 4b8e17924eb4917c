"""Xorb bytes -> chunks (hub-docs `docs/xet/xorb.md`): each chunk is an 8-byte header (version 0, the
stored length and the unpacked length as 3-byte little-endian numbers, the compression scheme) and its
stored bytes, which are as they are (0), an LZ4 frame (1), or an LZ4 frame of the chunk's bytes grouped
by their position in 4-byte words (2, "BG4"; the frame format, not a raw LZ4 block: what xet-core
writes, see tests/hubemu/xetformat.py).

A range of a xorb is read in blocks into one buffer and its chunks are unpacked as each is complete, so
a chunk's bytes are at hand (to be written) before the next one arrived, and memory stays one block and
one chunk whatever the range's size. Everything a server sends is bounded: a chunk unpacks to at most
`MAX_CHUNK` bytes (chunking.md's largest chunk), its stored form is at most twice that, and the range
must hold exactly the chunks asked for: anything else is `BadBytes` (bytes that cannot be the file).

LZ4 comes from the `lz4` package (C): measured on this machine, 4.5-6.7 GB/s on 64 KiB chunks of text
and of byte-grouped float32 weights, where a pure-Python decoder made 84 MB/s on the text (ten times
slower than the network) and `ctypes` on the system's liblz4 4.6-4.9 GB/s (not every system has it).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator

import lz4.frame

from prefetch.errors import BadBytes, TruncatedBody

HEADER = 8
MAX_CHUNK = 128 * 1024  # chunking.md: no chunk is longer
MAX_STORED = 2 * MAX_CHUNK  # a stored chunk (compression that did not pay should not be used at all)
READ_BLOCK = 1024 * 1024  # bytes asked of the socket at a time
SCHEME_NONE, SCHEME_LZ4, SCHEME_BG4_LZ4 = 0, 1, 2
# version (1 byte), stored length (3, little-endian: 2 + 1), scheme (1), unpacked length (3: 2 + 1)
_HEADER = struct.Struct("<BHBBHB")
_THREAD = threading.local()


def thread_buffer(name: str, size: int) -> bytearray:
    """A buffer of at least `size` bytes, this thread's own and reused: on this VM fresh pages cost more
    than the bytes copied into them (~1.2 s of page faults per GiB), and a range's fetch runs on one
    thread from start to end, one at a time."""
    buffer: bytearray | None = getattr(_THREAD, name, None)
    if buffer is None or len(buffer) < size:
        buffer = bytearray(size)
        setattr(_THREAD, name, buffer)
    return buffer


def unpack(stored: memoryview, scheme: int, length: int) -> bytes | memoryview:
    """One chunk's bytes from its stored form (a chunk stored as it is: that very view, not a copy);
    BadBytes when they cannot be `length` bytes of it."""
    if scheme == SCHEME_NONE:
        if len(stored) != length:
            raise BadBytes(f"a stored chunk of {len(stored)} bytes says it holds {length}")
        return stored
    if scheme not in (SCHEME_LZ4, SCHEME_BG4_LZ4):
        raise BadBytes(f"unknown chunk compression scheme {scheme}")
    decompressor = lz4.frame.LZ4FrameDecompressor()
    try:
        data = decompressor.decompress(stored, max_length=length)
    except RuntimeError as e:  # (how the lz4 package reports a damaged frame)
        raise BadBytes(f"a chunk's LZ4 frame does not decompress: {e}") from None
    if len(data) != length or not decompressor.eof or decompressor.unused_data:
        raise BadBytes(f"a chunk's LZ4 frame does not hold the {length} bytes its header says")
    return data if scheme == SCHEME_LZ4 else _ungroup(data)


def _ungroup(grouped: bytes) -> bytes:
    """BG4's inverse: bytes 0, 4, 8... came first, then 1, 5, 9..., then 2..., then 3...; a length
    that is not a multiple of 4 gave its extra bytes to the first groups."""
    n = len(grouped)
    out = bytearray(n)
    position = 0
    for k in range(4):
        size = n // 4 + (1 if k < n % 4 else 0)
        out[k::4] = grouped[position : position + size]
        position += size
    return bytes(out)


def chunks_of(
    read: Callable[[memoryview], int], count: int, size: int, before_move: Callable[[], None]
) -> Iterator[bytes | memoryview]:
    """The `count` chunks of a xorb range of `size` bytes that `read` (a `readinto`) delivers, each
    unpacked as soon as its last byte arrived. A chunk stored as it is comes as a view into the read
    buffer: valid until `before_move` is called (the buffer's tail is about to move to its front), so
    that the caller may gather such views and write them together. BadBytes when the bytes are not
    exactly those chunks; TruncatedBody when the stream ends early (a retry asks again)."""
    # A range that fits in one block gets a buffer of its size; a longer one, the thread's block.
    buffer = (
        bytearray(size) if size <= READ_BLOCK else thread_buffer("read", READ_BLOCK + HEADER + MAX_STORED)
    )
    view = memoryview(buffer)
    start = filled = received = made = 0
    while made < count:
        while filled - start >= HEADER:
            version, stored, stored_high, scheme, length, length_high = _HEADER.unpack_from(buffer, start)
            stored |= stored_high << 16
            length |= length_high << 16
            if version != 0 or stored > MAX_STORED or not 0 < length <= MAX_CHUNK:
                raise BadBytes(f"not a chunk header: {buffer[start : start + HEADER].hex()}")
            end = start + HEADER + stored
            if end > filled:
                break
            yield unpack(view[start + HEADER : end], scheme, length)
            start, made = end, made + 1
            if made == count:
                break
        if made == count:
            break
        if start and len(buffer) - filled < size - received:  # no room left: the incomplete chunk moves
            before_move()
            buffer[: filled - start] = buffer[start:filled]
            filled, start = filled - start, 0
        room = min(len(buffer), filled + size - received)
        if room <= filled:
            raise BadBytes(f"the xorb range ends inside chunk {made + 1} of {count}")
        n = read(view[filled:room])
        if n <= 0:
            raise TruncatedBody(f"the connection ended after {received} of {size} bytes of a xorb range")
        filled, received = filled + n, received + n
    if received != size or start != filled:
        raise BadBytes(f"a xorb range of {size} bytes holds more than its {count} chunks")
