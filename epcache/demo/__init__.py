"""The built-in demo: a generated dataset, extraction, a sweep and a report, end to end."""

from epcache.demo._run import DemoConfig as DemoConfig
from epcache.demo._run import DemoResult as DemoResult
from epcache.demo._run import run_demo as run_demo
from epcache.demo._shapes import ShapesConfig as ShapesConfig
from epcache.demo._shapes import make_shapes_dataset as make_shapes_dataset

__all__ = ["DemoConfig", "DemoResult", "ShapesConfig", "make_shapes_dataset", "run_demo"]
