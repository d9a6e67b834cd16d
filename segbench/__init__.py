"""segbench: reproduce and extend five classic semantic segmentation papers in one harness."""

__version__ = "0.1.0"
