"""What a probe head reads: token sources, layer mixes, and the readers of multi-layer and pooled groups.

``sources``: the token sources (``cls`` ... ``patch+registers``, ``pooled``), layer mixes and the
input shapes and heads they imply. ``layers``: plans and store sources for groups that read
several layers together or the store's pooled output. ``samples``: which sample indices a run
trains, selects and evaluates on (not the result rows, which are ``probe.results.rows``).
``reads``: what the reader delivers for a group and how each head's input is derived from it.
"""
