"""The merged view of a layer stack, served with FUSE.

- ``merge``: the merged tree of a stack, computed once into a compact index;
- ``index``: that index mapped in memory, and the C session that serves a mount from it;
- ``cache``: the one cache policy (timeouts, kernel caches, mount options);
- ``daemon``: mounting, the daemon's life, unmounting, statistics;
- ``handlers``: the pyfuse3 engine, the reference the C engine is tested against.

Imports: ``_oci``, ``_layer`` (the marker forms), ``_store`` and the leaves.
"""
