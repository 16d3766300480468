"""The distribution API over HTTP: talking to OCI / Docker v2 registries.

- ``client``: :class:`~layerfs._registry.client.RegistryClient`, one pooled HTTP client with
  negotiation, retries, redirects and resumable blob streams;
- ``auth``: credentials (docker config, containers auth.json) and the Basic / bearer-token dance.

It knows nothing of the store: it hands out verified manifests and blob streams.
Imports: ``_oci`` and the leaves.
"""
