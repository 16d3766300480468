"""The content-addressed store: blobs, unpacked layers, images, references and mount records.

It offers "stage, then publish": whoever fills a layer (the unpacker for pull and load) stages
it in a leased directory under ``tmp/`` without the store lock (:meth:`Store.stage_layer`), and
hands it back to be published under its diff ID (:meth:`Store.publish_layer`, which takes the
lock for the rename only), while a :meth:`Store.hold` keeps the image's layers from clean-up.
Everything that changes records goes through a :class:`Writer` (the lock).  Temporary names are
leased (``lease``): clean-up removes only what no live command owns.  The store never imports
what fills it (``_layer``, ``_transfer``), so data flows one way.
Imports: ``_oci`` and the leaves.
"""

from .lease import Lease as Lease
from .store import Image as Image
from .store import LayerRecord as LayerRecord
from .store import LayerStage as LayerStage
from .store import MountRecord as MountRecord
from .store import Store as Store
from .store import Writer as Writer
