"""The Xet storage format (hub-docs `docs/xet/*.md`, "Xet Protocol Specification" 1.1.0), server side.

Why: the test Hub must store Xet-backed files exactly as the Hub does, so that the real client (hf_xet)
downloads them through its Xet path and any independent implementation (prefetch's) can be held to it:
the same chunk boundaries, chunk/xorb/file hashes, hash strings and xorb bytes as the reference
implementation (xet-core). tests/test_hubemu_xet.py checks file hashes against `hf_xet.hash_files` and
has hf_xet read every xorb layout built here.

Speed: a 256 MiB file is chunked in ~2 s (the gear hash at a position depends only on the 64 bytes that
end there, so it is computed for a whole block at once with numpy, in L2-sized blocks); chunk hashing
(blake3) and compression attempts (lz4) add a fraction of that. `chunked()` caches, per content, the chunk
list and the serialized chunk runs a build produced, process-wide and bounded (`CACHE_LIMIT_BYTES`), so
the same files built again in a fresh emulator cost lookups only; with `HUBEMU_XET_CACHE` naming a folder,
chunk lists (40 bytes a chunk) are also kept there for the next process (a benchmark's Hub runs in one).

Where the reference implementation (xet-core, what hf_xet 1.8 runs) and the specification's text differ,
this module follows the reference implementation, because hf_xet checks every byte:

- **Merkle tree shape** (hashing.md says only "a MerkleTree" with the internal-node function): the tree is
  xet-core's aggregated hash: a level is cut into groups of at most 9 nodes; a group ends after the node
  at index i >= 2 (0-based in the group) whose hash, read as the little-endian u64 of its bytes 24..31, is
  divisible by 4, or at 9 nodes, or at the end of the level; levels repeat until one node is left. A
  one-chunk file's tree is that chunk's hash itself (no internal node).
- **Hash text inside internal nodes**: `{hash:x}` in hashing.md is the API string form (each 8-byte word
  reversed, api.md), not the hex of the raw bytes.
- **api.md's hash-string example** reads `...171615141312111f1e...`: 62 digits, byte 16's `10` is missing;
  its rule (each word a little-endian u64 in 16 digits) gives `...17161514131211101f1e...`, as xet-core does.
- **Empty file**: its file hash is 32 zero bytes (no keyed hash over an empty tree).
- **"Standard LZ4"** (xorb.md) is the LZ4 *frame* format (magic 04 22 4d 18, independent 64 KiB blocks,
  no checksums), not a raw LZ4 block; BG4 is the same frame over the regrouped bytes.
- **No xorb footer**: xet-core's library can append a footer to a serialized xorb (`XETBLOB`: chunk hashes
  and boundaries), but hf_xet 1.8 uploads the chunk stream alone, as xorb.md defines a xorb
  (tests/test_hubemu_xet.py captures an upload and compares it byte for byte): stored xorbs are that.
"""

from __future__ import annotations

import os
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import lz4.frame
import numpy as np

from ._gear_table import GEAR_TABLE

MIN_CHUNK = 8 * 1024
MAX_CHUNK = 128 * 1024
BOUNDARY_MASK = 0xFFFF_0000_0000_0000  # target 64 KiB: 16 one-bits, shifted all the way left (chunking.md)
MAX_XORB_BYTES = 64 * 1024 * 1024  # a serialized xorb (xorb.md)
MAX_XORB_CHUNKS = 8 * 1024  # (deduplication.md)

# fmt: off
DATA_KEY = bytes((
    102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28,
    157, 228, 33, 16, 155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41,
))
INTERNAL_NODE_KEY = bytes((
    1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230,
    93, 221, 83, 111, 55, 199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63,
))
# fmt: on
FILE_HASH_KEY = bytes(32)

# Chunk compression schemes (xorb.md) and the policies a store may follow when it writes chunks.
SCHEME_NONE, SCHEME_LZ4, SCHEME_BG4_LZ4 = 0, 1, 2
COMPRESSION_POLICIES = ("auto", "none", "lz4", "bg4-lz4")  # "auto": the smallest of the three, per chunk
CHUNK_HEADER_SIZE = 8

CACHE_LIMIT_BYTES = 4 * 1024**3  # serialized chunk runs kept by `chunked()` across emulators (LRU)
DISK_CACHE_ENV = "HUBEMU_XET_CACHE"  # a folder keeping chunk lists across processes (unset: none kept)
_LIST_ENTRY = struct.Struct("<Q32s")  # a chunk list on disk: per chunk, its end offset and hash

_TABLE = np.array(GEAR_TABLE, dtype=np.uint64)
_MASK = np.uint64(BOUNDARY_MASK)
_GEAR_BLOCK = 1 << 14  # 16 Ki positions: the block's uint64 arrays stay in L2 (measured fastest)
_WINDOW = 64


# ------------------------------------------------------------------------------------------- chunking
def _boundary_candidates(data: bytes | memoryview) -> np.ndarray:
    """Every position p whose gear hash (of the 64 bytes ending at p) passes the mask test.

    The hash is h(p) = sum over k < 64 of TABLE[data[p - k]] << k (mod 2**64): each block is built by
    doubling (windows of 1, 2, 4 ... 64 bytes), reading 63 bytes before the block. Positions in the first
    63 bytes of the data see a shorter window, as a byte-by-byte hasher starting from 0 does; no boundary
    can be taken there anyway (MIN_CHUNK).
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    n = len(arr)
    hashes = np.empty(_GEAR_BLOCK + _WINDOW, dtype=np.uint64)
    shifted = np.empty(_GEAR_BLOCK + _WINDOW, dtype=np.uint64)
    found: list[np.ndarray] = []
    for start in range(0, n, _GEAR_BLOCK):
        lo = max(0, start - (_WINDOW - 1))
        end = min(n, start + _GEAR_BLOCK)
        h = hashes[: end - lo]
        np.take(_TABLE, arr[lo:end], out=h)
        width = 1
        while width < min(_WINDOW, len(h)):
            kept = len(h) - width
            np.left_shift(h[:kept], np.uint64(width), out=shifted[:kept])
            np.add(h[width:], shifted[:kept], out=h[width:])
            width *= 2
        np.bitwise_and(h, _MASK, out=shifted[: len(h)])
        hits = np.flatnonzero(shifted[: len(h)] == 0) + lo
        found.append(hits[hits >= start])
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


def chunk_ends(data: bytes | memoryview) -> list[int]:
    """End offsets (exclusive) of the content-defined chunks of `data` (chunking.md).

    A chunk ends at the first position where it is at least MIN_CHUNK long and the gear hash passes the
    mask, or at MAX_CHUNK; the last chunk ends with the data. Same boundaries as the byte-by-byte
    pseudocode, whose hash is reset at each boundary: 64 shifts later the reset no longer shows.
    """
    n = len(data)
    candidates = _boundary_candidates(data)
    ends: list[int] = []
    start = 0
    while start < n:
        i = int(np.searchsorted(candidates, start + MIN_CHUNK - 1))
        end = int(candidates[i]) + 1 if i < len(candidates) else n + 1
        end = min(end, start + MAX_CHUNK, n)
        ends.append(end)
        start = end
    return ends


# ------------------------------------------------------------------------------------------- hashing
def chunk_hash(chunk: bytes | memoryview) -> bytes:
    """A chunk's hash: blake3 keyed with DATA_KEY (hashing.md), as raw bytes."""
    return blake3.blake3(chunk, key=DATA_KEY).digest()


def hash_string(raw: bytes) -> str:
    """The string form of a hash (api.md): each 8-byte word as a little-endian u64 in 16 hex digits."""
    return "".join(raw[i : i + 8][::-1].hex() for i in range(0, 32, 8))


def hash_from_string(text: str) -> bytes:
    """Raw bytes of a hash string (64 hex digits, either case); ValueError when it is not one."""
    if len(text) != 64:
        raise ValueError("a Xet hash string has 64 hex digits")
    raw = bytes.fromhex(text)
    return b"".join(raw[i : i + 8][::-1] for i in range(0, 32, 8))


def _merge(nodes: Sequence[tuple[bytes, int]]) -> tuple[bytes, int]:
    text = "".join(f"{hash_string(h)} : {size}\n" for h, size in nodes)
    return blake3.blake3(text.encode(), key=INTERNAL_NODE_KEY).digest(), sum(size for _, size in nodes)


def _group_end(level: Sequence[tuple[bytes, int]], start: int) -> int:
    """Where the group starting at `start` ends (xet-core's `next_merge_cut`)."""
    left = len(level) - start
    if left <= 2:
        return len(level)
    last = start + min(9, left)
    for i in range(start + 2, last):
        if level[i][0][24] % 4 == 0:  # the little-endian u64 of bytes 24..31, modulo 4
            return i + 1
    return last


def merkle_root(nodes: Sequence[tuple[bytes, int]]) -> bytes:
    """The aggregated hash of (hash, size) leaves, i.e. a xorb's hash when they are its chunks."""
    if not nodes:
        return bytes(32)
    level = list(nodes)
    while len(level) > 1:
        merged: list[tuple[bytes, int]] = []
        start = 0
        while start < len(level):
            end = _group_end(level, start)
            merged.append(_merge(level[start:end]))
            start = end
        level = merged
    return level[0][0]


def file_hash(nodes: Sequence[tuple[bytes, int]]) -> bytes:
    """A file's hash: the root over its chunks, keyed-hashed again with 32 zero bytes (hashing.md)."""
    if not nodes:
        return bytes(32)
    return blake3.blake3(merkle_root(nodes), key=FILE_HASH_KEY).digest()


# ----------------------------------------------------------------------------------------- chunks
def _lz4(data: bytes | memoryview) -> bytes:
    return lz4.frame.compress(data, block_linked=False, store_size=False)


def _bg4_split(data: bytes | memoryview) -> bytes:
    """Byte grouping (xorb.md): bytes 0, 4, 8... then 1, 5, 9... then 2... then 3..."""
    arr = np.frombuffer(data, dtype=np.uint8)
    return b"".join(arr[k::4].tobytes() for k in range(4))


def _bg4_join(grouped: bytes) -> bytes:
    n = len(grouped)
    out = np.empty(n, dtype=np.uint8)
    arr = np.frombuffer(grouped, dtype=np.uint8)
    pos = 0
    for k in range(4):
        size = n // 4 + (1 if k < n % 4 else 0)
        out[k::4] = arr[pos : pos + size]
        pos += size
    return out.tobytes()


def serialize_chunk(chunk: bytes | memoryview, policy: str) -> bytes:
    """A chunk as stored in a xorb: the 8-byte header, then the (compressed) bytes.

    A compressed form that is not smaller than the chunk is not used (the chunk is stored as is), as
    xet-core does; "auto" keeps the smallest of LZ4 and BG4-LZ4, one of the strategies xorb.md allows.
    """
    if policy not in COMPRESSION_POLICIES:
        raise ValueError(f"compression must be one of {COMPRESSION_POLICIES}, got {policy!r}")
    scheme, payload = SCHEME_NONE, bytes(chunk)
    tries: list[tuple[int, bytes]] = []
    if policy in ("auto", "lz4"):
        tries.append((SCHEME_LZ4, _lz4(chunk)))
    if policy in ("auto", "bg4-lz4"):
        tries.append((SCHEME_BG4_LZ4, _lz4(_bg4_split(chunk))))
    for candidate, compressed in tries:
        if len(compressed) < len(payload):
            scheme, payload = candidate, compressed
    # version 0, compressed length (3 bytes, little-endian), scheme, unpacked length (3 bytes, little-endian)
    header = (
        b"\x00" + len(payload).to_bytes(3, "little") + bytes((scheme,)) + len(chunk).to_bytes(3, "little")
    )
    return header + payload


def deserialize_chunks(stream: bytes | memoryview) -> list[bytes]:
    """The chunks of a serialized chunk stream (a xorb, or a range of it), decompressed."""
    view = memoryview(stream)
    chunks: list[bytes] = []
    pos = 0
    while pos < len(view):
        header = bytes(view[pos : pos + CHUNK_HEADER_SIZE])
        if len(header) < CHUNK_HEADER_SIZE or header[0] != 0:
            raise ValueError(f"bad chunk header at {pos}")
        length = int.from_bytes(header[1:4], "little")
        scheme = header[4]
        size = int.from_bytes(header[5:8], "little")
        payload = bytes(view[pos + CHUNK_HEADER_SIZE : pos + CHUNK_HEADER_SIZE + length])
        if scheme == SCHEME_NONE:
            chunk = payload
        elif scheme == SCHEME_LZ4:
            chunk = lz4.frame.decompress(payload)
        elif scheme == SCHEME_BG4_LZ4:
            chunk = _bg4_join(lz4.frame.decompress(payload))
        else:
            raise ValueError(f"unknown compression scheme {scheme} at {pos}")
        if len(chunk) != size:
            raise ValueError(f"chunk at {pos} unpacks to {len(chunk)} bytes, its header says {size}")
        chunks.append(chunk)
        pos += CHUNK_HEADER_SIZE + length
    return chunks


# ------------------------------------------------------------------------------------------- xorbs
@dataclass(frozen=True)
class Xorb:
    """A stored xorb: its chunks (header + data each) and where each one lies."""

    hash: bytes
    body: bytes
    chunk_starts: tuple[int, ...]  # serialized offset of each chunk in `body`, then len(body)
    unpacked_starts: tuple[int, ...]  # offset of each chunk in the unpacked stream, then its length
    chunk_hashes: tuple[bytes, ...]

    @property
    def size(self) -> int:
        return len(self.body)

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_hashes)

    def chunk_bytes(self, start: int, end: int) -> tuple[int, int]:
        """The inclusive byte range of chunks [start, end) in the object (what a url_range says)."""
        return self.chunk_starts[start], self.chunk_starts[end] - 1

    def unpacked_length(self, start: int, end: int) -> int:
        return self.unpacked_starts[end] - self.unpacked_starts[start]

    def object_range(self, first: int, last: int) -> memoryview:
        """Bytes [first, last] of the xorb, without a copy."""
        return memoryview(self.body)[first : last + 1]


def build_xorb(hashes: Sequence[bytes], sizes: Sequence[int], serialized: Sequence[bytes] | bytes) -> Xorb:
    """A xorb of these chunks (hash, unpacked size, serialized form), in order.

    `serialized` may be the chunks already joined (then they are used without a copy)."""
    body = serialized if isinstance(serialized, bytes) else b"".join(serialized)
    chunk_starts = [0]
    pos = 0
    for _ in hashes:
        pos += CHUNK_HEADER_SIZE + int.from_bytes(body[pos + 1 : pos + 4], "little")
        chunk_starts.append(pos)
    if pos != len(body):
        raise ValueError("the chunk area does not match the chunks given")
    unpacked = [0]
    for size in sizes:
        unpacked.append(unpacked[-1] + size)
    xorb = merkle_root(list(zip(hashes, sizes, strict=True)))
    return Xorb(xorb, body, tuple(chunk_starts), tuple(unpacked), tuple(hashes))


# --------------------------------------------------------------------------------- content cache
@dataclass
class ChunkedContent:
    """One content's chunks (end offsets, hashes) and the xorbs built of runs of them, reused by builds.

    `runs` maps (compression policy, xorb size limit, xorb chunk limit, first chunk) to a xorb a build made
    of the new chunks starting there (a run of this content's chunks, in order), for the next build to reuse.
    """

    ends: list[int]
    hashes: list[bytes]
    sizes: list[int]
    runs: dict[tuple[str, int, int, int], Xorb] = field(default_factory=dict)

    @property
    def cached_bytes(self) -> int:
        return sum(x.size for x in self.runs.values())


_CACHE: OrderedDict[tuple[str, int], ChunkedContent] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _list_path(sha256: str, size: int) -> Path | None:
    folder = os.environ.get(DISK_CACHE_ENV)
    if not folder or not re.fullmatch(r"[0-9a-f]{64}", sha256):
        return None
    return Path(folder) / f"{sha256}-{size}.chunks"


def _load_list(path: Path, size: int) -> tuple[list[int], list[bytes]] | None:
    """A chunk list kept on disk, if there is a plausible one for content of this size."""
    most = _LIST_ENTRY.size * (size // MIN_CHUNK + 1)
    try:
        with path.open("rb") as f:
            raw = f.read(most + 1)
    except OSError:
        return None
    if len(raw) > most or len(raw) % _LIST_ENTRY.size:
        return None
    entries = list(_LIST_ENTRY.iter_unpack(raw))
    ends = [end for end, _ in entries]
    sizes = [end - start for start, end in zip([0, *ends], ends, strict=False)]
    if (ends[-1] if ends else 0) != size or any(not 0 < s <= MAX_CHUNK for s in sizes):
        return None
    return ends, [h for _, h in entries]


def _save_list(path: Path, ends: list[int], hashes: list[bytes]) -> None:
    """Written whole then renamed, so a reader never sees half a list; a failure only costs the cache."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(b"".join(_LIST_ENTRY.pack(e, h) for e, h in zip(ends, hashes, strict=True)))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def chunked(data: bytes, sha256: str) -> ChunkedContent:
    """The chunks of `data` (whose sha256 is given, as the store knows it already), from a cache or new."""
    key = (sha256, len(data))
    with _CACHE_LOCK:
        found = _CACHE.get(key)
        if found is not None:
            _CACHE.move_to_end(key)
            return found
    path = _list_path(sha256, len(data))
    kept = _load_list(path, len(data)) if path is not None else None
    if kept is not None:
        ends, hashes = kept
    else:
        view = memoryview(data)
        ends = chunk_ends(view)
        hashes = [chunk_hash(view[start:end]) for start, end in zip([0, *ends], ends, strict=False)]
        if path is not None:
            _save_list(path, ends, hashes)
    sizes = [end - start for start, end in zip([0, *ends], ends, strict=False)]
    content = ChunkedContent(ends, hashes, sizes)
    with _CACHE_LOCK:
        content = _CACHE.setdefault(key, content)
        _CACHE.move_to_end(key)
    return content


def clear_cache() -> None:
    """Forget every content kept in this process (chunk lists on disk stay)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def trim_cache() -> None:
    """Forget the least recently used contents' xorbs until the cache holds at most CACHE_LIMIT_BYTES."""
    with _CACHE_LOCK:
        total = sum(c.cached_bytes for c in _CACHE.values())
        for key in list(_CACHE):
            if total <= CACHE_LIMIT_BYTES:
                break
            total -= _CACHE[key].cached_bytes
            del _CACHE[key]
