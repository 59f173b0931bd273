"""What a sweep is: the request's grid file, the runs it resolves to, and the plan that runs them.

``plan``: :func:`~epcache.probe.plan.plan_sweep`, the one resolution of a sweep every later
step reads. ``grid``: the grid file applied once, the sweep's settings, and every
:class:`~epcache.probe.config.runspec.RunSpec`. ``checks``: the per-config checks whose messages
are collected into one error for the whole sweep.
"""
