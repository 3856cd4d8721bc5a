"""MindloopAgent: think steps that re-read the image (attend/scan over the CNN's cells) from
the env's raw frames, through act, the replay and the PonderNet forward; one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agent.agent import MindloopAgent
from agent.config import AgentConfig
from agent.cores import CoreConfig
from agent.policy import Decisions, StepInfo
from agent.think import ThinkConfig
from encoders.fusion import FusedEncoderConfig

OBS = spaces.Dict(
    image=spaces.Box(0, 255, (32, 32, 3), np.uint8),
    audio=spaces.Box(-1.0, 1.0, (2, 640), np.float32),
    proprio=spaces.Box(-1.0, 1.0, (6,), np.float32),
)
ACT = spaces.Dict(muscles=spaces.Box(0.0, 1.0, (4,), np.float32))


def image_agent(think_input: str, k_max: int = 3, tokens_from: str = "image") -> MindloopAgent:
    torch.manual_seed(0)
    config = AgentConfig(
        encoders=FusedEncoderConfig(
            options={"image.channels": "(8, 16)", "audio.channels": "(8,)"}, embed_dim=32
        ),
        core=CoreConfig(hidden_dim=32),
        think=ThinkConfig(k_max=k_max, think_input=think_input, init_halt_prob=0.2),
        think_tokens_from=tokens_from,
    )
    return MindloopAgent(OBS, ACT, config)


def random_obs(lead: tuple[int, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (*lead, 32, 32, 3), generator=g, dtype=torch.uint8),
        "audio": torch.rand(*lead, 2, 640, generator=g) * 0.2 - 0.1,
        "proprio": torch.rand(*lead, 6, generator=g) * 2 - 1,
    }


@pytest.mark.parametrize("think_input", ["attend", "scan"])
def test_act_and_replay_agree_when_think_steps_read_the_image(think_input):
    """Rollout frame by frame with ``act``, then replay the recorded decisions over the whole
    sequence: identical log-probs and values (the tokens come from the same encoder pass)."""
    agent = image_agent(think_input)
    T, B = 5, 3
    obs = random_obs((T, B))
    starts = torch.zeros(T, B, dtype=torch.bool)
    starts[0] = True
    starts[3, 1] = True  # an episode boundary inside the sequence
    state0 = agent.initial_state(B)
    state, acts, steps, ops, log_probs, values = state0, [], [], [], [], []
    for t in range(T):
        action, state, info = agent.act_tensors({k: v[t] for k, v in obs.items()}, state, starts[t])
        acts.append(action["muscles"])
        steps.append(info.decisions.think_steps)
        ops.append(info.decisions.mem_ops)
        log_probs.append(info.log_prob)
        values.append(info.value)
    assert torch.stack(steps).max() > 0, "the test needs frames that think"
    decisions = Decisions(torch.stack(steps), torch.stack(ops))
    with torch.no_grad():
        info, _ = agent(obs, state0, starts, {"muscles": torch.stack(acts)}, decisions)
    torch.testing.assert_close(info.log_prob, torch.stack(log_probs))
    torch.testing.assert_close(info.value, torch.stack(values))


def test_attend_over_the_image_trains_the_cnn_through_the_glimpse():
    """The think steps read the image cells: with the observe step's embedding detached, the
    CNN still gets a gradient from the PonderNet forward, through the tokens alone."""
    agent = image_agent("attend").train()
    T, B = 2, 2
    x, tokens = agent.encode_frames(random_obs((T, B)))  # (T, B, 32), (T, B, 64, 18)
    assert tokens.shape == (T, B, 8 * 8, 16 + 2)  # 32 px / 2 / 2: 8x8 cells of 16 channels
    starts = torch.ones(T, B, dtype=torch.bool)
    out, _ = agent.policy.ponder_sequence(
        x.detach(), agent.initial_state(B), starts, obs_tokens=tokens
    )
    conv = agent.encoder.encoders["image"].conv[0].weight
    (grad,) = torch.autograd.grad(out.hidden.square().sum(), conv)
    assert grad.abs().sum() > 0


def test_thinking_off_or_a_plain_think_input_reads_no_tokens():
    for agent in (image_agent("attend", k_max=0), image_agent("token")):
        _, tokens = agent.encode_frames(random_obs((2,)))
        assert tokens is None


@pytest.mark.parametrize(
    "tokens_from, expected",
    [
        ("touch", "no observation key 'touch' to take think tokens from; keys: audio, image"),
        ("audio", "encoder 'logmel' gives no tokens for the think steps to read; encoders that"),
    ],
)
def test_bad_token_source_is_one_line(tokens_from, expected):
    with pytest.raises(ValueError) as err:
        image_agent("attend", tokens_from=tokens_from)
    msg = str(err.value)
    assert expected in msg and "\n" not in msg


@pytest.mark.parametrize("think_input", ["token", "attend"])
@pytest.mark.parametrize("lead", [(), (2, 3)])
def test_act_on_an_unbatched_or_sequence_observation_is_one_line(think_input, lead):
    agent = image_agent(think_input, k_max=1)
    with pytest.raises(ValueError) as err:
        agent.act(random_obs(lead), None, np.ones(lead[-1] if lead else 1, bool))
    msg = str(err.value)
    assert f"lead shape {lead}" in msg and "add a batch axis" in msg and "\n" not in msg
    actions, _, _ = agent.act(random_obs((1,)), None, np.ones(1, bool))  # a batch of one
    assert actions["muscles"].shape == (1, 4)


class _DeviceFlags(torch.Tensor):
    """Stands in for a tensor on a GPU here: numpy cannot view it."""

    def __array__(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy")


@pytest.mark.parametrize(
    "flags",
    [
        lambda: np.array([True, False]),
        lambda: [True, False],
        lambda: torch.tensor([True, False]),
        lambda: torch.tensor([True, False]).as_subclass(_DeviceFlags),
    ],
)
def test_act_takes_episode_start_as_numpy_list_or_tensor_on_any_device(flags):
    agent = image_agent("token", k_max=1)
    state = agent.initial_state(2)
    torch.manual_seed(0)
    expected, _, _ = agent.act(random_obs((2,)), state, np.array([True, False]))
    torch.manual_seed(0)
    actions, _, _ = agent.act(random_obs((2,)), state, flags())
    np.testing.assert_array_equal(actions["muscles"], expected["muscles"])


def test_replay_takes_the_numpy_actions_act_returned():
    """What MindloopAgent.act hands out (numpy actions, numpy episode starts) replays as it is."""
    agent = image_agent("token", k_max=2)
    T, B = 3, 2
    obs = random_obs((T, B))
    starts = np.zeros((T, B), bool)
    starts[0] = True
    state = state0 = agent.initial_state(B)
    actions, infos = [], []
    for t in range(T):
        action, state, info = agent.act({k: v[t] for k, v in obs.items()}, state, starts[t])
        actions.append(action)
        infos.append(info)
    stacked = {k: np.stack([a[k] for a in actions]) for k in actions[0]}
    info = StepInfo.stack(infos)
    out, _ = agent.evaluate_sequence(obs, state0, starts, stacked, info.decisions)
    torch.testing.assert_close(out.log_prob, info.log_prob)
