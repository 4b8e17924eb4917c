"""The Hub's Xet storage, read on prefetch's download engine (issue 28; hub-docs `docs/xet/*.md`).

`reader` (the run's Xet path: rounds of reconstruction, copies and xorb ranges into a file; the fall
back to /resolve), `batches` (the lane's small files, in batches), `cas` (CAS tokens and
reconstructions), `placement` (terms at their file offsets; chunks written there), `xorbs` (one xorb
range from the transfer host, with exactly its signed Range), `chunks` (xorb bytes unpacked into
chunks), `sources` (chunks already on disk: the `.prefetch-xet` records beside blobs, the run's ranges).
"""
