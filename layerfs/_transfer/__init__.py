"""Moving images between the store and the world.

- ``pull``: from a registry (``_registry``) into the store;
- ``load``: from an OCI layout or an archive on disk into the store;
- ``commit``: a writable mount's upper directory as a new image of the store;
- ``layers``: where a blob stream meets the unpacker and the store's stage and publish;
- ``progress``: docker-like progress lines.

Imports: ``_oci``, ``_registry``, ``_layer``, ``_store`` and the leaves.
"""
