"""A small offscreen MuJoCo renderer.

:class:`OffscreenRenderer` is a lean version of ``mujoco.Renderer``: it takes the GL context
class from :mod:`envs.gl` (so it works even if ``mujoco`` was imported before ``envs``), sizes
the offscreen buffer to the image (clearing a 640x480 buffer for a 64x64 frame costs more
than drawing it), and must be closed explicitly: ``mujoco.Renderer`` frees its EGL context in
``__del__``, which raises EGL errors at interpreter exit.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import warnings
import weakref
from typing import Any, ClassVar

import mujoco
import numpy as np

from envs.gl import INSTALL_HINT, gl_backend, gl_context_class

_LIVE: weakref.WeakSet[OffscreenRenderer] = weakref.WeakSet()
_atexit_registered = False
_gl_pid: int | None = None
"""The process that made a GL context here (a forked child inherits the parent's pid)."""
_FORK_UNSAFE_BACKENDS = ("egl", "osmesa")
"""Backends whose first context in a process forked after rendering waits forever (Mesa's
locks and worker threads do not survive a fork)."""


def check_not_forked_after_gl() -> None:
    """A one-line ``RuntimeError`` in a process forked from one that had already made an
    EGL/OSMesa context: its first frame would hang forever (Gymnasium's ``AsyncVectorEnv``
    forks by default on Linux, e.g. after an env was used in the parent)."""
    backend = gl_backend() or os.environ.get("MUJOCO_GL", "").strip().lower()
    if _gl_pid is None or _gl_pid == os.getpid() or backend not in _FORK_UNSAFE_BACKENDS:
        return
    raise RuntimeError(
        f"this process was forked from process {_gl_pid} after that one had rendered with "
        f"MuJoCo ({backend}); rendering after such a fork hangs forever. Start worker "
        "processes with 'forkserver' or 'spawn': gymnasium.make_vec(..., vectorization_mode="
        "'async', vector_kwargs={'context': 'forkserver'}), AsyncVectorEnv(fns, context="
        "'forkserver'), or SB3's SubprocVecEnv (forkserver by default)"
    )


class _ForeignContext:
    """Another library's GL context that was current before one of ours, made current again
    after our frame. Gymnasium's MuJoCo renderer (``render_mode="rgb_array"``) makes its
    context current once and then draws into whatever is current, so without this a
    Gymnasium MuJoCo env in the same process as a mindloop env rendered blank frames after
    the mindloop env's first frame. Backends: ``egl`` (mindloop's default) and ``glfw``; an
    OSMesa context cannot be made current again without knowing its buffer's pixel type, so
    ``osmesa`` is left alone. Contexts of mindloop's own renderers are never restored: a
    process with only mindloop renderers pays one ``eglGetCurrentContext`` call a frame."""

    _own: ClassVar[set[int]] = set()
    """Addresses of the live contexts of mindloop's renderers."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.saved: tuple | None = None

    def address(self, gl: Any) -> int | None:
        """The address of a mujoco ``GLContext``'s native context (None if not tracked)."""
        return self._address_of(getattr(gl, "_context", None))

    def _address_of(self, native: Any) -> int | None:
        """The address of a native context: an EGLContext or a glfw window (None: none)."""
        if not native:
            return None
        if self.backend == "egl":
            return native.address  # PyOpenGL's EGLContext pointer
        if self.backend == "glfw":
            return ctypes.cast(native, ctypes.c_void_p).value  # the context's glfw window
        return None

    def _is_foreign(self, native: Any) -> bool:
        address = self._address_of(native)
        return address is not None and address not in self._own

    def save(self) -> None:
        """Remember the current context if it is foreign."""
        self.saved = None
        if self.backend == "egl":
            from OpenGL import EGL

            ctx = EGL.eglGetCurrentContext()
            if self._is_foreign(ctx):
                self.saved = (
                    EGL.eglGetCurrentDisplay(),
                    EGL.eglGetCurrentSurface(EGL.EGL_DRAW),
                    EGL.eglGetCurrentSurface(EGL.EGL_READ),
                    ctx,
                )
        elif self.backend == "glfw":
            import glfw

            try:  # before glfw.init() (our first context) pyGLFW reports an error
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    window = glfw.get_current_context()
            except Exception:  # ERROR_REPORTING = "raise"
                window = None
            if self._is_foreign(window):
                self.saved = (window,)

    def restore(self) -> None:
        """Make the remembered foreign context current again (if any)."""
        if self.saved is None:
            return
        saved, self.saved = self.saved, None
        if self.backend == "egl":
            from OpenGL import EGL

            EGL.eglMakeCurrent(*saved)
        else:
            import glfw

            glfw.make_context_current(saved[0])


def _close_all() -> None:
    """Free renderers their owners forgot to close, before EGL itself is torn down."""
    for renderer in list(_LIVE):
        renderer.close()


def _register_atexit() -> None:
    # atexit runs last-registered first; registering after the first GL context exists puts
    # this hook ahead of mujoco.egl's own eglTerminate hook.
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_close_all)
        _atexit_registered = True


class OffscreenRenderer:
    """Renders one camera of a model into ``(height, width, 3)`` uint8 frames.

    ``camera`` is a camera name, an id, or an ``MjvCamera`` (e.g. a tracking free camera);
    ``option`` selects what is drawn (geom groups, tendons). ``fast=True`` turns off shadows
    and multisampling for this renderer only (they cost ~20 ms a frame in software GL); the
    model's own settings are restored afterwards so other renderers are unaffected.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        width: int,
        height: int,
        camera: str | int | mujoco.MjvCamera = -1,
        option: mujoco.MjvOption | None = None,
        fast: bool = True,
        max_geom: int = 2000,
    ) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        self._gl = None
        self._con = None
        self.model = model
        self.width, self.height = int(width), int(height)
        self.camera = self._make_camera(model, camera)
        self.option = option if option is not None else mujoco.MjvOption()
        self.scene = mujoco.MjvScene(model, maxgeom=max_geom)
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._buf = np.empty((self.height, self.width, 3), dtype=np.uint8)

        context_class = gl_context_class()
        check_not_forked_after_gl()
        self._foreign = _ForeignContext(gl_backend() or os.environ.get("MUJOCO_GL", "").lower())
        self._foreign.save()
        try:
            self._gl = context_class(self.width, self.height)
            self._gl.make_current()
        except Exception as e:  # EGL/OSMesa report failures as several exception types
            self._gl = None
            self._foreign.restore()
            raise RuntimeError(
                f"could not create an OpenGL context ({e}); {INSTALL_HINT}"
            ) from None
        self._address = self._foreign.address(self._gl)
        if self._address is not None:
            _ForeignContext._own.add(self._address)
        vis = model.vis
        saved = (vis.global_.offwidth, vis.global_.offheight, vis.quality.shadowsize,
                 vis.quality.offsamples)  # fmt: skip
        try:
            vis.global_.offwidth, vis.global_.offheight = self.width, self.height
            if fast:
                vis.quality.shadowsize, vis.quality.offsamples = 0, 0
            self._con = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._con)
        finally:
            (vis.global_.offwidth, vis.global_.offheight, vis.quality.shadowsize,
             vis.quality.offsamples) = saved  # fmt: skip
            self._foreign.restore()
        global _gl_pid
        _gl_pid = os.getpid()
        _LIVE.add(self)
        _register_atexit()

    @staticmethod
    def _make_camera(
        model: mujoco.MjModel, camera: str | int | mujoco.MjvCamera
    ) -> mujoco.MjvCamera:
        if isinstance(camera, mujoco.MjvCamera):
            return camera
        cam_id = camera
        if isinstance(camera, str):
            cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            if cam_id < 0:
                names = [model.camera(i).name for i in range(model.ncam)]
                raise ValueError(f"camera {camera!r} not in the model; cameras: {names}")
        if not -1 <= cam_id < model.ncam:
            raise ValueError(f"camera id {cam_id} out of range [-1, {model.ncam})")
        cam = mujoco.MjvCamera()
        if cam_id == -1:
            mujoco.mjv_defaultFreeCamera(model, cam)
        else:
            cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
            cam.fixedcamid = cam_id
        return cam

    def update(self, data: mujoco.MjData) -> None:
        """Build the scene from ``data`` (also fills ``scene.camera``, the eye pose)."""
        mujoco.mjv_updateScene(
            self.model, data, self.option, None, self.camera, mujoco.mjtCatBit.mjCAT_ALL, self.scene
        )

    def render(self, data: mujoco.MjData) -> np.ndarray:
        """A new ``(height, width, 3)`` uint8 frame of ``data`` seen from the camera."""
        if self._con is None:
            raise RuntimeError("render() called after close()")
        self.update(data)
        self._foreign.save()
        try:
            self._gl.make_current()
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._con)
            mujoco.mjr_render(self._rect, self.scene, self._con)
            mujoco.mjr_readPixels(self._buf, None, self._rect, self._con)
        finally:
            self._foreign.restore()
        return self._buf[::-1].copy()  # GL rows run bottom-up; copy so callers may keep it

    def close(self) -> None:
        """Free the GL resources now (idempotent). Never raises: when the GL display is
        already gone (pygame's ``quit()`` terminates the EGL display it shares with MuJoCo,
        e.g. after Gymnasium's ``HumanRendering`` on a headless machine), the resources went
        with it and there is nothing left to free."""
        con, gl = self._con, self._gl
        self._con = self._gl = None
        try:
            if gl is not None:
                try:
                    self._foreign.save()  # while ours still counts as ours: never saved
                finally:
                    _ForeignContext._own.discard(self._address)
            if con is not None:
                if gl is not None:
                    gl.make_current()  # GL objects are freed in their own context
                con.free()
            if gl is not None:
                gl.free()
                self._foreign.restore()
        except Exception:  # EGL/OSMesa report a dead display as several exception types
            if gl is not None and hasattr(gl, "_context"):
                gl._context = None  # its __del__ would retry the failed free

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> OffscreenRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
