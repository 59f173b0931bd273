"""The image folder that the torchrun campaigns share (defined once, in tests/helpers/scale_helpers.py)."""

from scale_helpers import data as data
