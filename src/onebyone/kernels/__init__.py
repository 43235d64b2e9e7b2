"""Fast paths of the PyTorch op, one file each, all behind the same signature.

Every kernel module exposes::

    conv1x1(x, weight, bias, *, stride, groups, activation, residual) -> Tensor
    unsupported(x, needs_grad) -> str | None   # None when it can run, else why not

``x`` is a batched ``(N, C, H, W)`` tensor in any memory format, ``weight`` the
2-D ``(K, C/groups)`` matrix, ``residual`` ``None`` or the output's shape. The
arguments arrive validated (see ``onebyone.functional``).
"""

from onebyone.kernels import gemm, onednn

__all__ = ["gemm", "onednn"]
