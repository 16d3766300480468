"""Helpers of ``scripts/bench``: the benchmark harness of layerfs (not part of the package).

Modules, in the order the harness uses them:

- ``_util``: running commands, mounts and processes we own (the :class:`Janitor` that undoes
  them, even on SIGINT/SIGTERM), page-cache drops and the noise counters of ``/proc/vmstat``;
- ``_image``: the two image recipes (``full``: debootstrap + apt, as docs/peers.rst "The bench image";
  ``quick``: a small generated tree) built once into the cache, as overlay-form layer dirs, an OCI
  layout, a flattened rootfs and a local registry's storage;
- ``_registry``: a ``docker-registry`` bound to 127.0.0.1, started and stopped by PID;
- ``_systems``: the systems compared: the plain directory, the kernel overlay, fuse-overlayfs and
  layerfs, each mounted read-only or with a fresh upper;
- ``_workloads``: the workloads of docs/peers.rst "Workloads", plus the pull / unpack ones;
- ``_report``: the table (terminal and Markdown), the raw runs (JSON) and the chart (PNG).
"""
