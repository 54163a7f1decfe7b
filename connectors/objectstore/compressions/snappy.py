"""Snappy, as Firehose writes it: ``SNAPPY`` is Snappy's framing format (stream identifier
``\\xff\\x06\\x00\\x00sNaPpY``, CRC-checked chunks) and ``HADOOP_SNAPPY`` is Hadoop's block
format. Decoding is cramjam's (Rust ``snap``; already the Kafka clients' Snappy codec).

Hadoop's format has no magic number: a block is a 4-byte big-endian uncompressed length, then
chunks of a 4-byte big-endian compressed length and a raw Snappy block, until the block's
length is reached. Only the framing is unpacked here; every byte of Snappy is cramjam's.
"""

from __future__ import annotations

import struct

import cramjam

from connectors.objectstore.errors import ObjectReadError

NAME = "snappy"
HADOOP_NAME = "hadoop-snappy"
FRAMED_MAGIC = b"\xff\x06\x00\x00sNaPpY"
# Hadoop's codec buffers 256 KiB per block; anything up to 64 MiB is accepted. Text never looks
# like a block header: its first byte is at least 0x09, a length of 150 MiB or more.
HADOOP_MAX_BLOCK = 64 << 20


def is_framed(head: bytes) -> bool:
    return head.startswith(FRAMED_MAGIC)


def looks_hadoop(head: bytes) -> bool:
    """Whether ``head`` could start a Hadoop-Snappy object (a plausible first block header)."""
    if len(head) < 8:
        return False
    block, chunk = struct.unpack(">II", head[:8])
    return 0 < block <= HADOOP_MAX_BLOCK and 0 < chunk <= HADOOP_MAX_BLOCK + HADOOP_MAX_BLOCK // 6


def unframe(data: bytes) -> bytes:
    try:
        return bytes(cramjam.snappy.decompress(data))
    except cramjam.DecompressionError as exc:
        raise ObjectReadError("corrupt_snappy", f"Snappy stream is corrupt: {exc}") from exc


def unhadoop(data: bytes) -> bytes:
    out: list[bytes] = []
    pos, end = 0, len(data)
    try:
        while pos < end:
            if end - pos < 4:
                raise ValueError(f"{end - pos} stray bytes after the last block")
            (block,) = struct.unpack_from(">I", data, pos)
            pos += 4
            if block > HADOOP_MAX_BLOCK:
                raise ValueError(f"block of {block} bytes is over {HADOOP_MAX_BLOCK}")
            done = 0
            while done < block:
                if end - pos < 4:
                    raise ValueError("object ends inside a block")
                (size,) = struct.unpack_from(">I", data, pos)
                pos += 4
                if size > end - pos:
                    raise ValueError("object ends inside a chunk")
                chunk = bytes(cramjam.snappy.decompress_raw(data[pos : pos + size]))
                pos += size
                done += len(chunk)
                out.append(chunk)
            if done != block:
                raise ValueError(f"block holds {done} bytes, its header says {block}")
    except (ValueError, cramjam.DecompressionError) as exc:
        raise ObjectReadError(
            "corrupt_hadoop_snappy", f"Hadoop-Snappy stream is corrupt: {exc}"
        ) from exc
    return b"".join(out)
