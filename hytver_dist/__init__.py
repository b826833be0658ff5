"""hytver-dist: HyTver and the losses of its MS-lesion study, fused kernels and Ray sweeps."""

__version__ = "0.1.0"
