"""The example plug-in package really installs and is found by name, with no edit to mindloop.

It is pip-installed into a temporary directory (not the shared venv) and used from
subprocesses whose PYTHONPATH includes that directory, exactly as an installed third-party
package would be found: through its ``mindloop.encoders`` entry point.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "mindloop-example-encoder"

USE_PLUGIN = textwrap.dedent(
    """
    import gymnasium as gym, mujoco, numpy as np, torch
    from encoders import ENCODERS, build_encoder, build_fused_encoder

    assert "depth" in ENCODERS.names(), ENCODERS.names()
    space = gym.spaces.Box(0.0, np.inf, (32, 32, 1), np.float32)
    enc = build_encoder("depth", space, {"max_depth": 3.0})
    assert type(enc).__module__ == "mindloop_example_encoder.depth"
    near = enc(torch.full((2, 32, 32, 1), 0.5))
    far = enc(torch.full((2, 32, 32, 1), 10.0))
    assert near.shape == (2, enc.embed_dim) and not torch.allclose(near, far)
    try:
        build_encoder("depth", gym.spaces.Box(0, 255, (32, 32, 3), np.uint8))
        raise SystemExit("an RGB space should have been refused")
    except ValueError as err:
        assert "\\n" not in str(err)

    # The sensor side: a MuJoCo scene gains a depth camera; the fused encoder picks the
    # plug-in by the observation key's name.
    from mindloop_example_encoder import DepthObservation

    XML = '''<mujoco><worldbody><light pos="0 0 3"/>
      <camera name="eye" pos="0 -1 0.5" xyaxes="1 0 0 0 0.45 0.9"/>
      <geom type="plane" size="2 2 .1"/>
      <body pos="0 0 0.2"><freejoint/><geom type="box" size=".1 .1 .1"/></body>
    </worldbody></mujoco>'''

    class FallingBox(gym.Env):
        def __init__(self):
            self.model = mujoco.MjModel.from_xml_string(XML)
            self.data = mujoco.MjData(self.model)
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (7,), np.float64)
            self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            mujoco.mj_resetData(self.model, self.data)
            mujoco.mj_forward(self.model, self.data)
            return self.data.qpos.copy(), {}
        def step(self, action):
            mujoco.mj_step(self.model, self.data)
            return self.data.qpos.copy(), 0.0, False, False, {}

    env = DepthObservation(FallingBox(), camera="eye")
    obs, _ = env.reset(seed=0)
    assert obs["depth"].shape == (32, 32, 1) and 0.3 < obs["depth"].min() < obs["depth"].max()
    fused = build_fused_encoder(env.observation_space)
    assert fused.config.encoders == {"depth": "depth", "proprio": "proprio"}, fused.config
    assert fused(obs).shape == (fused.embed_dim,)
    env.close()
    print("plugin ok")
    """
)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """The example package pip-installed into a temporary --target directory."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the repo.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = work / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (target / "mindloop_example_encoder" / "depth.py").exists()
    return target


def run_with_plugin(target: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(REPO)])
    env.setdefault("MUJOCO_GL", "egl")
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_plugin_is_found_by_name_and_encodes_a_depth_camera(plugin_path: Path) -> None:
    result = run_with_plugin(plugin_path, ["-c", USE_PLUGIN])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "plugin ok" in result.stdout


def test_plugin_passes_the_registry_contract_tests(plugin_path: Path) -> None:
    """The registry-parametrized tests pick up the installed plug-in by themselves."""
    result = run_with_plugin(
        plugin_path,
        [
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "depth",
            str(REPO / "tests" / "test_encoders.py"),
        ],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # every registry-wide contract test ran on the plug-in (one per test over ALL)
    contract = (REPO / "tests" / "test_encoders.py").read_text()
    expected = contract.count('@pytest.mark.parametrize("name", ALL)')
    assert f"{expected} passed" in result.stdout, result.stdout


def readme_block_with(text: str) -> str:
    """The README's ```python block containing ``text``."""
    readme = (REPO / "README.md").read_text()
    at = readme.index(text)
    start = readme.rindex("```python\n", 0, at) + len("```python\n")
    return readme[start : readme.index("```", at)]


def test_readme_depth_example_runs_as_written_and_exits_quietly(plugin_path: Path) -> None:
    """It wrapped an undefined env with a camera mindloop tasks lack ("eye"), and never closed
    it: the GL contexts then failed in __del__ at exit ("Exception ignored ... EGLError")."""
    result = run_with_plugin(plugin_path, ["-c", readme_block_with("DepthObservation(")])
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, (
        result.stderr
    )


def test_documented_encoder_flags_parse() -> None:
    """The encoder flags the README and FusedEncoderConfig's docstring show are train.py's."""
    import re

    import train as train_script

    readme = (REPO / "README.md").read_text()
    line = re.search(r"`(--[\w.-]*encoders rear_cam [^`]*)`", readme)
    assert line is not None, "the README's command-line encoder example is gone"
    config = train_script.parse_config(line.group(1).split())
    assert config.agent.encoders.encoders == {"rear_cam": "depth"}
    assert config.agent.encoders.options["rear_cam.max_depth"] == "3.0"
    doc = re.search(r"``(--[\w.-]*options [^`]*)``", _field_doc("options"))
    assert doc is not None, "FusedEncoderConfig.options no longer shows its flag"
    options = train_script.parse_config(doc.group(1).split()).agent.encoders.options
    assert options["image.pool"] == "mean" and options["image.embed_dim"] == "128"


def _field_doc(name: str) -> str:
    """The attribute docstring of a FusedEncoderConfig field (the text under it)."""
    source = (REPO / "encoders" / "fusion.py").read_text()
    at = source.index(f"    {name}: ")
    return source[at : source.index('"""', source.index('"""', at) + 3)]
