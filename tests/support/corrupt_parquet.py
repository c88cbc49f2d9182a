"""Damages one column chunk of a Parquet file in place, as a bad disk or a torn upload would:
the footer stays readable (so the pre-flight's footer checks pass) but the chunk's pages do not."""

from __future__ import annotations

import pyarrow.parquet as pq

PAGE_HEADER_BYTES = 24  # left intact: the damage is in the page's data, not its header


def corrupt_chunk(path, column: str, row_group: int) -> None:
    """Scrambles the data of ``column``'s chunk in ``row_group`` of the file at ``path``."""
    rg = pq.ParquetFile(path).metadata.row_group(row_group)
    chunk = next(rg.column(j) for j in range(rg.num_columns) if rg.column(j).path_in_schema == column)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data = bytearray(open(path, "rb").read())
    for i in range(start + PAGE_HEADER_BYTES, start + chunk.total_compressed_size):
        data[i] = (data[i] * 7 + 13) % 256
    with open(path, "wb") as fh:
        fh.write(bytes(data))
