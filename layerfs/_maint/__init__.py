"""Keeping a store healthy: pruning what nothing needs, verifying what is kept.

- ``prune``: ``image prune`` (dangling images, or with ``-a`` every image no container or mount
  uses), ``container prune`` (containers not mounted), what each freed;
- ``verify``: every blob against its digest, every layer directory against the tree digest
  recorded when it was published, every record (references, images, chains, containers, mounts)
  and merged index consistent; ``--repair`` removes what is broken, never what a live mount uses.

It sits above the store, the layers and the mount because it checks all three.  Imports:
``_oci``, ``_store``, ``_layer``, ``_mount`` and the leaves.
"""
