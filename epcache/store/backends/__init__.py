"""The zarr and HDF5 backends, and the one chunk-read policy (``chunks``) that their local (``local``)
and remote (``remote``) chunk sources share (cache_layout.md §4)."""
