"""The bottom of ``epcache.probe``: what a sweep asks for, as plain data, without torch.

``probe_config`` (:class:`ProbeConfig`, the request), ``sections`` (its settings grouped by
concern) and ``fields`` (their value checks);
``recipes`` and ``protocol`` (named training protocols and how one resolves for a dataset);
``runspec`` (one config of a sweep and the settings they share); ``inputs`` (token sources,
layer mixes, dtypes). These modules import nothing else from ``epcache.probe``.
"""
