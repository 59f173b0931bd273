"""What a sweep is: the request (``ProbeConfig``), its grid file, and the runs it resolves to.

``config``: the request and its parsers. ``grid``: the grid file applied once, the sweep's settings,
and every :class:`~epcache.probe.sweep.grid.RunSpec`. ``checks``: the per-config checks whose
messages are collected into one error for the whole sweep.
"""
