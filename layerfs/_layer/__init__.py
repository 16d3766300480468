"""A layer: one tar stream in overlay form.

- ``whiteout``: every whiteout and opaque-directory marker form, in one place;
- ``override``: the owners, modes and device numbers an unprivileged unpack keeps in
  ``user.containers.override_stat``, as rootless containers-storage does;
- ``compress``: gzip / zstd / plain streams, sniffed by their magic bytes;
- ``unpack``: applying one layer tar safely to an empty directory, in the kernel overlay's form;
- ``generate``: the reverse, for commit: an upper directory over its lowers as a layer tar stream;
- ``changes``: what an upper changed, as ``docker diff`` lists it.

It knows nothing of the store: it turns a stream into a directory, and an upper directory back
into a stream.  Imports: ``_oci`` and the leaves (``_sys`` for the system calls).
"""
