"""Headless OpenGL backend choice for MuJoCo (imports nothing from mujoco at module level).

MuJoCo reads ``MUJOCO_GL`` once, when ``mujoco`` is first imported, so the backend must be
chosen before that: ``envs/__init__.py`` calls :func:`select_gl_backend` first thing. A
user's own ``MUJOCO_GL`` always wins. Otherwise EGL is tried, then OSMesa, each in a short
subprocess (a failed GL library load cannot be undone inside this process), and the one that
works is exported into ``os.environ`` so vector-env subprocesses inherit it without probing.

If no backend works, state-only use (``obs_keys`` without ``"image"``) still works; creating a
renderer raises a one-line error naming the Debian packages to install.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import subprocess
import sys
import warnings
from typing import Any

HEADLESS_BACKENDS: tuple[str, ...] = ("egl", "osmesa")
INSTALL_HINT = (
    "no headless OpenGL backend works for MuJoCo rendering: install EGL "
    "(Debian/Ubuntu: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri) or OSMesa "
    "(apt-get install libosmesa6), or set MUJOCO_GL to a backend that works "
    "(or drop 'image' from obs_keys for state-only runs)"
)

# Renders one 8x8 frame of an empty model: proves the context, the GL functions MuJoCo needs
# and the offscreen framebuffer all work, not just that a library loads.
_PROBE = """
import mujoco
from mujoco.{backend} import GLContext
ctx = GLContext(8, 8)
ctx.make_current()
m = mujoco.MjModel.from_xml_string('<mujoco><visual><global offwidth="8" offheight="8"/>'
                                   '</visual><worldbody/></mujoco>')
con = mujoco.MjrContext(m, mujoco.mjtFontScale.mjFONTSCALE_100)
mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, con)
con.free()
ctx.free()
"""

_selected: str | None = None
_failure: str | None = None


def _probe(backend: str, timeout: float = 60.0) -> bool:
    """True if ``backend`` can create a context and render in a fresh interpreter."""
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE.format(backend=backend)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def select_gl_backend() -> str | None:
    """Choose the GL backend MuJoCo will use and export it as ``MUJOCO_GL``.

    Returns the backend name, or ``None`` when the platform default is used (macOS/Windows)
    or when nothing works (then :func:`gl_context_class` raises the install hint). Runs the
    probes at most once per process tree: the result is exported to ``os.environ``.
    """
    global _selected, _failure
    if sys.platform.startswith("linux"):
        preload_triton()
    user = os.environ.get("MUJOCO_GL", "").strip().lower()
    if user:
        _selected = user
        _check_user_backend(user)
        return user
    if not sys.platform.startswith("linux"):
        return None  # mujoco picks CGL (macOS) / WGL (Windows), both headless-capable
    for backend in HEADLESS_BACKENDS:
        if _probe(backend):
            os.environ["MUJOCO_GL"] = backend
            # PyOpenGL must agree with MuJoCo's context (mujoco.egl sets it too, but only if
            # nothing imported OpenGL first).
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            _selected = backend
            return backend
    _failure = INSTALL_HINT
    return None


def preload_triton() -> bool:
    """Load Triton's native library now, before any GL context exists; True if loaded.

    Torch's Linux wheels ship Triton, whose statically linked LLVM segfaults while loading
    if Mesa's LLVM (llvmpipe: software EGL and OSMesa) is already in the process (both
    register the same global LLVM options); the opposite order is fine. Torch loads Triton
    lazily, e.g. the first time an optimizer is built (``torch.optim.Adam`` imports
    ``torch._dynamo``), which in a training script is usually after the first frame was
    rendered. Loading the library (~70 ms, no ``import torch``) prevents that crash.

    Too late when Mesa's LLVM is already loaded (``mujoco`` imported with
    ``MUJOCO_GL=osmesa``, or a frame rendered, before ``envs``): loading would crash this
    import, so it warns instead, naming the fix.
    """
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return False
    path = os.path.join(spec.submodule_search_locations[0], "_C", "libtriton.so")
    if not os.path.exists(path):
        return False
    libraries = _mapped_libraries()
    llvm = next((n for n in map(os.path.basename, libraries) if n.startswith("libLLVM")), None)
    if llvm is not None and os.path.realpath(path) not in set(map(os.path.realpath, libraries)):
        warnings.warn(
            f"Mesa's LLVM ({llvm}) was loaded before mindloop's envs (mujoco imported with "
            "MUJOCO_GL=osmesa, or a frame rendered, first): torch's Triton will crash this "
            "process when it loads (the first torch.optim optimizer, torch.compile); import "
            "envs before mujoco",
            RuntimeWarning,
            # this function <- select_gl_backend <- envs/__init__ <- the user's `import envs`
            # (warnings skips importlib's own frames)
            stacklevel=4,
        )
        return False
    try:
        ctypes.CDLL(path)
    except OSError:
        return False
    return True


def _mapped_libraries() -> list[str]:
    """Paths of the shared libraries loaded in this process (empty where /proc is missing)."""
    try:
        with open("/proc/self/maps") as maps:
            return [line.split()[-1] for line in maps if ".so" in line]
    except OSError:
        return []


def _check_user_backend(backend: str) -> None:
    """``import mujoco`` loads the GL library ``MUJOCO_GL`` names and fails with a long
    traceback if it is missing; turn that into one line saying what to do."""
    try:
        import mujoco  # noqa: F401
    except (ImportError, AttributeError, OSError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise RuntimeError(
            f"MUJOCO_GL={backend!r} does not work here ({type(e).__name__}: {first}); unset "
            "MUJOCO_GL to let mindloop pick a backend, or install it (Debian/Ubuntu: apt-get "
            "install libegl1 libegl-mesa0 libgl1-mesa-dri for egl, libosmesa6 for osmesa)"
        ) from None


def gl_backend() -> str | None:
    """The backend chosen by :func:`select_gl_backend` (``None``: platform default/none)."""
    return _selected


def gl_context_class() -> Any:
    """The GLContext class for the chosen backend; a one-line RuntimeError if none works."""
    if _failure is not None:
        raise RuntimeError(_failure)
    backend = _selected or os.environ.get("MUJOCO_GL", "").strip().lower()
    try:
        if backend == "egl":
            from mujoco.egl import GLContext
        elif backend == "osmesa":
            from mujoco.osmesa import GLContext
        else:
            from mujoco.gl_context import GLContext
    except (ImportError, AttributeError, OSError) as e:
        raise RuntimeError(
            f"MUJOCO_GL={backend or '(default)'} failed ({e}); {INSTALL_HINT}"
        ) from None
    return GLContext
