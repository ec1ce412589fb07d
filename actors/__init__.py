"""Ray shells around estarter's core classes. The only package that imports Ray."""

from .kernel import KernelActor, get_or_create_kernel
from .options import KERNEL_NAME, NAMESPACE
from .supervisor import SupervisorActor

__all__ = ["KERNEL_NAME", "NAMESPACE", "KernelActor", "SupervisorActor",
           "get_or_create_kernel"]
