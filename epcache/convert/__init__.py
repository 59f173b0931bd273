"""``epcache convert``: derive a smaller store from an existing one, without the backbone.

A lab extracts once in fp16 and publishes smaller copies: fewer layers, a pooled patch grid, another
dtype or backend. The copy's provenance names its source's (``derived_from``), and it is built beside
its destination and swapped in only when complete, like ``extract --overwrite``.
"""

from epcache._deprecated import convert as convert  # the old name of convert_store, for one release
from epcache.convert._config import ConvertConfig as ConvertConfig
from epcache.convert._config import ConvertResult as ConvertResult
from epcache.convert._run import convert_store as convert_store

__all__ = ["ConvertConfig", "ConvertResult", "convert_store"]
