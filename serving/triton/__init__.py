"""The real Triton Inference Server (from the nvidia-pytriton wheel) on the CPU python flavour of a repository."""

from serving.triton.flavour import FlavourReport, derive_python_flavour, python_config, read_config
from serving.triton.ports import free_port
from serving.triton.server import TritonError, TritonInstall, TritonServer, find_triton

__all__ = [
    "FlavourReport",
    "TritonError",
    "TritonInstall",
    "TritonServer",
    "derive_python_flavour",
    "find_triton",
    "free_port",
    "python_config",
    "read_config",
]
