"""The formats: what an OCI / Docker image is, independent of where it is kept or sent.

- ``digest``: ``sha256:<hex>`` digests, ChainIDs, hashing while streaming;
- ``reference``: image references, normalised as docker normalises them;
- ``platform``: ``os/arch[/variant]`` and containerd's rules for choosing one from an index;
- ``manifest``: manifests, indexes and configs, their media types and the checks pull and load share.

Nothing here touches the network or the disk.  Imports: the leaves only (``_errors``).
"""
