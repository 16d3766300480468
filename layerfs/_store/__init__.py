"""The content-addressed store: blobs, unpacked layers, images, references and mount records.

It offers "stage, then publish": a writer stages a layer directory under ``tmp/``, whoever fills
it (the unpacker for pull and load) hands it back to be published under its diff ID.  The store
never imports what fills it (``_layer``, ``_transfer``), so data flows one way.
Imports: ``_oci`` and the leaves.
"""

from .store import Image as Image
from .store import LayerRecord as LayerRecord
from .store import LayerStage as LayerStage
from .store import MountRecord as MountRecord
from .store import Store as Store
from .store import Writer as Writer
