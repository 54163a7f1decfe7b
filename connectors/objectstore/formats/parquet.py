"""Parquet, streamed by row group through ranged reads: a 2-million-row Leanplum file is never
held in memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

import orjson

from connectors.objectstore.errors import ObjectReadError
from connectors.objectstore.formats.base import Row

if TYPE_CHECKING:
    import pyarrow

NAME = "parquet"
PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".parq")  # named Parquet but without the magic: corrupt Parquet
BATCH_ROWS = 8192


def read_parquet(handle: IO[bytes], skip: int = 0) -> Iterator[Row]:
    """The rows of a seekable Parquet file from row ``skip`` on; closes ``handle``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        try:
            # buffer_size streams column chunks in pieces; pre_buffer would fetch whole
            # row groups, which for a 2M-row Leanplum file is what must not happen.
            parquet = pq.ParquetFile(handle, buffer_size=1 << 20, pre_buffer=False)
            meta = parquet.metadata
            groups: list[int] = []
            index = 0
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                if index + rows <= skip and not groups:
                    index += rows  # whole row group already done: not even read
                    continue
                groups.append(g)
            convert = row_converter(parquet.schema_arrow)
            batches = (
                parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, use_threads=False)
                if groups
                else iter(())
            )
            for batch in batches:
                for row in batch.to_pylist():
                    if index >= skip:
                        doc = convert(row)
                        yield Row(index, orjson.dumps(doc, default=_json_default), doc)
                    index += 1
        except (pa.ArrowException, OSError) as exc:
            raise ObjectReadError("corrupt_parquet", f"Parquet file is unreadable: {exc}") from exc
    finally:
        handle.close()


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)  # Decimal and any other scalar pyarrow hands back


def row_converter(schema: pyarrow.Schema) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Turns ``to_pylist`` rows into JSON objects that keep every field.

    pyarrow gives maps as lists of ``(key, value)`` pairs (Leanplum ``user_attributes``); they
    become objects. Structs are already dicts; bytes and decimals are handled by orjson's default.
    """
    import pyarrow as pa

    def for_type(t: pa.DataType) -> Callable[[Any], Any] | None:
        if pa.types.is_map(t):
            value_conv = for_type(t.item_type)
            if value_conv is None:
                return lambda v: None if v is None else {str(k): x for k, x in v}
            return lambda v: None if v is None else {str(k): value_conv(x) for k, x in v}
        if pa.types.is_struct(t):
            subs: dict[str, Callable[[Any], Any]] = {}
            for i in range(t.num_fields):
                sub = for_type(t.field(i).type)
                if sub is not None:
                    subs[t.field(i).name] = sub
            if not subs:
                return None
            return lambda v: (
                None if v is None else {k: (subs[k](x) if k in subs else x) for k, x in v.items()}
            )
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            item_conv = for_type(t.value_type)
            if item_conv is None:
                return None
            return lambda v: None if v is None else [item_conv(x) for x in v]
        return None

    converters = {f.name: c for f in schema if (c := for_type(f.type)) is not None}
    if not converters:
        return lambda row: row

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        for name, conv in converters.items():
            row[name] = conv(row.get(name))
        return row

    return convert
