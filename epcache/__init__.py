"""epcache: extract frozen-encoder tokens once, probe them many times."""

__version__ = "0.1.0"
