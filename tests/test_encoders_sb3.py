"""The SB3 bridge: mindloop encoders inside real SB3 PPO and sb3-contrib RecurrentPPO."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.vec_env import VecTransposeImage

from encoders import FusedEncoderConfig, build_fused_encoder
from encoders.sb3 import MindloopFeaturesExtractor, sb3_policy_kwargs
from envs.vocab import VOCAB_SIZE, encode


class TinySensorsEnv(gym.Env):
    """A point "hand" must reach a target that is seen (a coloured square), heard (a tone
    panned toward it) and named in text: every standard observation key, in pure Gymnasium."""

    def __init__(self, size: int = 32, samples: int = 320, text_len: int = 6) -> None:
        self.size, self.samples = size, samples
        self.observation_space = gym.spaces.Dict(
            {
                "image": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
                "audio": gym.spaces.Box(-1.0, 1.0, (2, samples), np.float32),
                "proprio": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
                "touch": gym.spaces.Box(0.0, np.inf, (1,), np.float32),
                "text": gym.spaces.MultiDiscrete([VOCAB_SIZE] * text_len),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.text = encode("reach the red ball", text_len)

    def _obs(self) -> dict[str, np.ndarray]:
        img = np.full((self.size, self.size, 3), 60, np.uint8)
        r, c = (self.target * (self.size - 4)).astype(int)
        img[r : r + 4, c : c + 4] = (210, 40, 30)
        hr, hc = (self.hand * (self.size - 2)).astype(int)
        img[hr : hr + 2, hc : hc + 2] = (240, 240, 240)
        t = np.arange(self.samples) / 16000.0
        tone = 0.5 * np.sin(2 * np.pi * 440.0 * t)
        pan = np.clip(self.target[1] - self.hand[1], -1, 1)  # > 0: target to the right
        audio = np.stack([tone * (1 - pan) / 2, tone * (1 + pan) / 2]).astype(np.float32)
        dist = np.linalg.norm(self.hand - self.target)
        return {
            "image": img,
            "audio": audio,
            "proprio": np.concatenate([self.hand, self.hand - self.prev]).astype(np.float32),
            "touch": np.array([float(dist < 0.1)], np.float32),
            "text": self.text.copy(),
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.target = self.np_random.uniform(0, 1, 2)
        self.hand = self.prev = self.np_random.uniform(0, 1, 2)
        self.steps = 0
        return self._obs(), {}

    def step(self, action):
        self.prev = self.hand
        self.hand = np.clip(self.hand + 0.1 * np.asarray(action, np.float64), 0, 1)
        self.steps += 1
        dist = float(np.linalg.norm(self.hand - self.target))
        return self._obs(), -dist, dist < 0.05, self.steps >= 32, {}


SMALL = FusedEncoderConfig(
    configs={
        "image": {"channels": (16, 32, 32), "embed_dim": 64},
        "audio": {"channels": (8, 16), "embed_dim": 32},
    },
    embed_dim=64,
)


def test_tiny_env_passes_the_checkers() -> None:
    check_env(TinySensorsEnv(), warn=False)


@pytest.mark.parametrize("normalize_images", [False, True])
def test_extractor_undoes_sb3_preprocessing(normalize_images: bool) -> None:
    """What SB3 feeds the extractor (transposed, /255, one-hot) encodes exactly like the raw
    observation fed to the same fused encoder."""
    env_space = TinySensorsEnv().observation_space
    sb3_space = VecTransposeImage.transpose_space(env_space["image"])
    space = gym.spaces.Dict({**env_space.spaces, "image": sb3_space})
    torch.manual_seed(0)
    extractor = MindloopFeaturesExtractor(space, SMALL, normalize_images=normalize_images).eval()
    env = TinySensorsEnv()
    raw = [env.reset(seed=s)[0] for s in range(3)]
    batch = {k: torch.as_tensor(np.stack([o[k] for o in raw])) for k in space.spaces}
    batch["image"] = batch["image"].permute(0, 3, 1, 2)  # what VecTransposeImage does
    seen = preprocess_obs(batch, space, normalize_images=normalize_images)
    assert seen["text"].shape == (3, 6 * VOCAB_SIZE)  # SB3 one-hot encodes MultiDiscrete
    undone = extractor.undo_preprocessing(seen)
    assert torch.equal(undone["text"], batch["text"])
    assert torch.equal(undone["image"], batch["image"].float())
    torch.testing.assert_close(extractor(seen), extractor.fused(batch))


def test_extractor_restores_discrete_ids() -> None:
    space = gym.spaces.Dict(
        {
            "phase": gym.spaces.Discrete(3),
            "proprio": gym.spaces.Box(-1, 1, (2,), np.float32),
        }
    )
    extractor = MindloopFeaturesExtractor(space).eval()
    obs = {"phase": torch.tensor([0, 2, 1]), "proprio": torch.zeros(3, 2)}
    seen = preprocess_obs(obs, space)
    assert seen["phase"].shape == (3, 3)  # one-hot
    assert torch.equal(extractor.undo_preprocessing(seen)["phase"], obs["phase"])
    torch.testing.assert_close(extractor(seen), extractor.fused(obs))


def test_mismatched_normalize_images_fails_with_the_fix() -> None:
    env_space = TinySensorsEnv().observation_space
    extractor = MindloopFeaturesExtractor(env_space, SMALL, normalize_images=False)
    env = TinySensorsEnv()
    obs = {k: torch.as_tensor(v)[None] for k, v in env.reset(seed=0)[0].items()}
    divided = preprocess_obs(obs, env_space, normalize_images=True)
    with pytest.raises(ValueError, match="sb3_policy_kwargs"):
        extractor(divided)


def test_ppo_trains_with_mindloop_encoders() -> None:
    torch.manual_seed(0)
    model = PPO(
        "MultiInputPolicy",
        TinySensorsEnv(),
        n_steps=64,
        batch_size=32,
        n_epochs=2,
        policy_kwargs=sb3_policy_kwargs(SMALL, net_arch=[32]),
        seed=0,
        device="cpu",
    )
    extractor = model.policy.features_extractor
    assert isinstance(extractor, MindloopFeaturesExtractor)
    assert model.policy.normalize_images is False
    before = {k: v.clone() for k, v in extractor.state_dict().items()}
    model.learn(total_timesteps=256)
    after = extractor.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "image" in k)
    # Running normalization learned the proprio statistics during the updates (train mode).
    assert float(extractor.fused.encoders["proprio"].norm.count) > 0
    action, _ = model.predict(TinySensorsEnv().reset(seed=1)[0], deterministic=True)
    assert action.shape == (2,)


def test_recurrent_ppo_trains_with_mindloop_encoders() -> None:
    torch.manual_seed(0)
    model = RecurrentPPO(
        "MultiInputLstmPolicy",
        TinySensorsEnv(),
        n_steps=64,
        batch_size=32,
        n_epochs=2,
        policy_kwargs=sb3_policy_kwargs(SMALL, lstm_hidden_size=32, net_arch=[32]),
        seed=0,
        device="cpu",
    )
    assert isinstance(model.policy.features_extractor, MindloopFeaturesExtractor)
    model.learn(total_timesteps=256)
    obs = TinySensorsEnv().reset(seed=2)[0]
    action, state = model.predict(obs, state=None, episode_start=np.ones(1, bool))
    assert action.shape == (2,) and state is not None


def _muscle_reach_id() -> str | None:
    try:
        import envs  # noqa: F401  (registers the mindloop/ ids)
    except ImportError:
        return None
    env_id = "mindloop/MuscleReach-v0"
    return env_id if env_id in gym.registry else None


class SingleKeyAction(gym.ActionWrapper):
    """A one-key Dict action space as its plain Box (SB3 has no Dict actions)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        ((self.key, self.action_space),) = env.action_space.spaces.items()

    def action(self, action):
        return {self.key: action}


@pytest.mark.skipif(
    _muscle_reach_id() is None, reason="mindloop/MuscleReach-v0 is not registered yet"
)
def test_fused_encoder_and_ppo_on_muscle_reach() -> None:
    env = gym.make(_muscle_reach_id())
    if isinstance(env.action_space, gym.spaces.Dict) and len(env.action_space.spaces) == 1:
        env = SingleKeyAction(env)
    try:
        torch.manual_seed(0)
        enc = build_fused_encoder(env.observation_space)
        assert set(enc.keys) == set(env.observation_space.spaces)
        obs, _ = env.reset(seed=0)
        out = enc(obs)
        assert out.shape == (enc.embed_dim,) and torch.isfinite(out).all()
        model = PPO(
            "MultiInputPolicy",
            env,
            n_steps=64,
            batch_size=32,
            n_epochs=1,
            policy_kwargs=sb3_policy_kwargs(SMALL),
            device="cpu",
            seed=0,
        )
        model.learn(total_timesteps=128)
        assert float(model.policy.features_extractor.fused.encoders["proprio"].norm.count) > 0
    finally:
        env.close()
