"""The errors layerfs raises to its callers.

Every error a user can cause (a bad reference, a broken archive, a wrong digest, an image in use)
is a :class:`LayerfsError`; its ``str()`` is the one line the CLI prints after ``Error: ``.  Lower
levels add context as the error travels up, umoci-style: ``load oci:dir: layer sha256:…: <cause>``.
"""

from __future__ import annotations


class LayerfsError(Exception):
    """Base class: a failure the user can act on.  ``str(err)`` is one line naming the thing."""

    def with_context(self, context: str) -> LayerfsError:
        """Return an error of the same class whose message is prefixed by ``context: ``."""
        err = type(self).__new__(type(self))
        Exception.__init__(err, f"{context}: {self}")
        err.__dict__.update(self.__dict__)
        return err


class InvalidReference(LayerfsError):
    """A reference or digest that does not parse (docker's "invalid reference format")."""


class ImageNotFound(LayerfsError):
    """No image in the store answers to the given name, ID or digest."""


class DigestMismatch(LayerfsError):
    """Content whose digest is not the one it was announced with."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class BadArchive(LayerfsError):
    """A layer tar that cannot be applied: broken, truncated, or trying to leave its root."""


class BadImage(LayerfsError):
    """A manifest, config or layout that is malformed or unsupported."""


class Conflict(LayerfsError):
    """An operation refused because of the store's state (an image in use, a tag elsewhere)."""


class RegistryError(LayerfsError):
    """A registry that refused, failed or could not be reached."""


class MountError(LayerfsError):
    """A mount point that is busy, missing, not empty, or a daemon that failed to start."""
