"""Using an image: runtime bundles and running commands through a real OCI runtime.

- ``config``: an OCI runtime ``config.json`` generated from an image's config (entrypoint, command,
  environment, working directory, user), with docker's defaults for mounts, namespaces and
  capabilities, fitted to the machine (rlimits never raised, a user namespace when not root);
- ``users``: ``USER[:GROUP]`` resolved against the image's own /etc/passwd and /etc/group, read
  inside the mounted root (never through a symlink out of it);
- ``runtime``: finding ``runc`` or ``crun`` and running a bundle with them, standard input,
  output, terminal and signals passed through, the command's exit status returned.

A bundle's root filesystem is a writable layerfs mount of a container (``_mount``, ``_store``):
what ``umoci unpack`` makes, but mounted, not copied.  Imports: ``_oci``, ``_store``, ``_mount``
and the leaves.
"""
