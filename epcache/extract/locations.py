"""Where a store's images are: the recorded data root (portable or absolute) and finding an image by id.

Used by convert (re-recording a copied store's root), repair and ``epcache attention``.
"""

from __future__ import annotations

from epcache.extract._lookup import image_fetcher
from epcache.extract._recorded import portable_location, rebased_data_root, recorded_data_root, records_data_root

__all__ = ["image_fetcher", "portable_location", "rebased_data_root", "recorded_data_root", "records_data_root"]
