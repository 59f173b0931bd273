"""How trained heads are optimised: recipes and the resolved protocol, stacked heads and optimisers, the fused trainer.

``recipes`` / ``protocol``: named protocols and how they adapt to a dataset. ``stacks``
(one module per stacked kind, ``make_stack``) / ``stacked_optim`` / ``optim``: heads of one shape stacked into batched
ops and the per-slice optimisers (LARS, AdamW, Adam, SGD). ``trainer``: one input group, one pass per epoch.
``group``: a group's streams, checkpoints and results rows.
"""
