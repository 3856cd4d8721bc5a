"""Example mindloop plug-in: a depth-camera observation (``DepthObservation``) and the
encoder that reads it (``DepthEncoder``, registered as ``"depth"``)."""

from mindloop_example_encoder.depth import DepthConfig, DepthEncoder

__all__ = ["DepthConfig", "DepthEncoder"]


def __getattr__(name: str):
    # The wrapper needs mujoco; import it only when asked, so the encoder alone stays light.
    if name == "DepthObservation":
        from mindloop_example_encoder.wrapper import DepthObservation

        return DepthObservation
    raise AttributeError(name)
