"""A layer: one tar stream in overlay form.

- ``whiteout``: every whiteout and opaque-directory marker form, in one place;
- ``compress``: gzip / zstd / plain streams, sniffed by their magic bytes;
- ``unpack``: applying one layer tar safely to an empty directory, in the kernel overlay's form.

It knows nothing of the store: it turns a stream into a directory (and later an upper directory
back into a tar, for commit).  Imports: ``_oci`` and the leaves (``_sys`` for the system calls).
"""
