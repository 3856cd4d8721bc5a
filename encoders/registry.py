"""Re-export of mindloop's generic name → class registry (defined in ``envs.registry``, the
bottom layer, so that ``envs``, ``encoders`` and ``agent`` share one implementation)."""

from envs.registry import Registry, UnknownNameError

__all__ = ["Registry", "UnknownNameError"]
