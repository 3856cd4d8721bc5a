"""CueRecall perception: can an image readout find the ball of a given colour?

The perception half of CueRecall's colour-matched reach, without memory or control: from the
frame the balls first show (64 x 64, three balls of different colours, cue light off) and
the cue colour as a one-hot (what the memory would hand back), regress the posture the
expert heads for (``expert_latent()``: the cued ball's joint angles). Supervised, frames from
the scripted expert, scored on held-out episodes. Readouts compared side by side on the
same frames, each on the light CNN mindloop trains (8-16-32 channels, an 8 x 8 map,
``encoders/image.py``) except ``keypoints``:

* ``flatten``: the encoder's flattened-map embedding (its default) + the cue -> MLP;
* ``flatten+glimpse``: the same plus an attention read over the feature-map cells (query
  from the cue, keys/values from each cell's channels and (x, y): a one-head version of
  the ``attend`` think input's glimpse);
* ``mean+glimpse``: the encoder with ``pool="mean"`` (what is in the frame, not where) plus
  the glimpse;
* ``glimpse``: the glimpse read alone;
* ``keypoints``: the encoder with ``pool="spatial_softmax"`` on one conv (a 32 x 32 map, 16
  channels, 32 keypoints): each keypoint's expected (x, y), no per-cell weights. Its map is
  16x the cells of the others', so a difference is the pool and the map size together.

The glimpse can only say *where* by reading a cell's (x, y); the flattened map can memorise
where each training layout puts things. The held-out R² says which readout generalises.

    python benchmarks/cue_perception.py --quick
    nice -n 10 python benchmarks/cue_perception.py

Ends with ``headline: glimpse_heldout_r2=<R²> (target >=0.9)`` (without the ``glimpse``
readout: the first readout run, e.g. ``keypoints_heldout_r2``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parent / "out" / "cue_perception.json"
TASK = "mindloop/CueRecall-v0"
READOUTS = ("flatten", "flatten+glimpse", "mean+glimpse", "glimpse", "keypoints")


def collect_frames(n: int, seed: int) -> dict[str, np.ndarray]:
    """The balls' first frame of ``n`` CueRecall episodes (delay 0, the expert driving):
    ``image`` (n, 64, 64, 3) uint8, ``cue`` (n,) colour index, ``latent`` (n, d)."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the tasks)

    env = gym.make(TASK, delay_steps=0)
    u = env.unwrapped
    images, cues, latents = [], [], []
    for k in range(n):
        obs, _ = env.reset(seed=seed + k)
        while u._step_count <= u.reach_start:  # up to the first frame that shows the balls
            obs, *_ = env.step(u.expert_action())
        images.append(obs["image"])
        cues.append(u._cue)
        latents.append(u.expert_latent())
    env.close()
    return {"image": np.stack(images), "cue": np.array(cues), "latent": np.stack(latents)}


def build_readout(name: str, num_colors: int, latent_dim: int):
    """Image (B, 64, 64, 3) uint8 + cue (B,) -> latent (B, d), normalized units."""
    import gymnasium as gym
    import torch
    from torch import nn

    from encoders.image import CNNImageConfig, CNNImageEncoder

    pool = {"mean+glimpse": "mean", "keypoints": "spatial_softmax"}.get(name, "flatten")
    channels = (16,) if name == "keypoints" else (8, 16, 32)
    space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)

    class Readout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cfg = CNNImageConfig(channels=channels, embed_dim=256, pool=pool)
            self.cnn = CNNImageEncoder(space, cfg)
            self.use_embedding = name != "glimpse"
            self.use_glimpse = name.endswith("glimpse")
            d = 64
            self.query = nn.Linear(num_colors, d)
            self.key = nn.Linear(self.cnn.token_dim, d)
            self.value = nn.Linear(self.cnn.token_dim, d)
            width = num_colors + 256 * self.use_embedding + d * self.use_glimpse
            self.mlp = nn.Sequential(
                nn.Linear(width, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                nn.Linear(256, latent_dim),
            )  # fmt: skip

        def forward(self, image: torch.Tensor, cue: torch.Tensor) -> torch.Tensor:
            embedding, tokens = self.cnn.forward_tokens(image)  # (B, 256), (B, N, c + 2)
            one_hot = nn.functional.one_hot(cue, num_colors).float()  # (B, colours)
            parts = [one_hot]
            if self.use_embedding:
                parts.append(embedding)
            if self.use_glimpse:
                q = self.query(one_hot)  # (B, d)
                scores = (self.key(tokens) @ q.unsqueeze(-1)).squeeze(-1)  # (B, N)
                weights = torch.softmax(scores / q.shape[-1] ** 0.5, dim=-1)
                parts.append((weights.unsqueeze(-1) * self.value(tokens)).sum(1))  # (B, d)
            return self.mlp(torch.cat(parts, dim=-1))

    return Readout()


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    """1 - SSE / SST over all entries (per-dimension means)."""
    return 1.0 - float(((pred - target) ** 2).sum()) / float(((target - target.mean(0)) ** 2).sum())


def fit(
    name: str, train: dict, test: dict, steps: int, seed: int, log_every: int
) -> dict[str, Any]:
    """Adam, batch 64, ``steps`` updates; held-out and train R² of the latent, and the
    held-out R² every ``log_every`` updates (the learning curve)."""
    import torch

    from envs import vocab

    torch.manual_seed(seed)
    x, c = torch.as_tensor(train["image"]), torch.as_tensor(train["cue"])
    y = torch.as_tensor(train["latent"], dtype=torch.float32)
    mu, sd = y.mean(0), y.std(0)
    model = build_readout(name, len(vocab.COLORS), y.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def score(data: dict) -> float:
        img, cue = torch.as_tensor(data["image"]), torch.as_tensor(data["cue"])
        pred = torch.cat(
            [model(img[k : k + 500], cue[k : k + 500]) for k in range(0, len(img), 500)]
        )
        return r2((pred * sd + mu).numpy(), data["latent"])

    t0, curve = time.perf_counter(), {}
    for step in range(1, steps + 1):
        i = torch.randint(0, len(x), (64,), generator=gen)
        loss = (model(x[i], c[i]) - (y[i] - mu) / sd).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps:
            curve[step] = score(test)
    seconds = time.perf_counter() - t0  # scoring included
    n_train = min(len(x), len(test["image"]))
    train_part = {k: v[:n_train] for k, v in train.items()}
    return {"heldout_r2": curve[steps], "train_r2": score(train_part), "seconds": seconds,
            "heldout_r2_by_step": curve}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small data and few steps (< 1 min)")
    ap.add_argument("--train-frames", type=int, default=6000)
    ap.add_argument("--test-frames", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=3000, help="Adam updates per readout")
    ap.add_argument("--log-every", type=int, default=500, help="held-out R² every N updates")
    ap.add_argument("--readouts", nargs="+", default=list(READOUTS), choices=READOUTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    for name in ("train_frames", "test_frames", "steps", "log_every"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.quick:
        a.train_frames, a.test_frames, a.steps, a.log_every = 400, 200, 200, 100

    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train = collect_frames(a.train_frames, seed=10_000_000)
    test = collect_frames(a.test_frames, seed=20_000_000)  # other episodes than training's
    print(f"{a.train_frames} train / {a.test_frames} held-out frames in "
          f"{time.perf_counter() - t0:.0f}s; {a.steps} updates per readout")  # fmt: skip
    print("| readout | held-out R² | train R² | held-out R² by update | fit s |")
    print("|---|---:|---:|---|---:|")
    results = {}
    for name in a.readouts:
        m = fit(name, train, test, a.steps, a.seed, a.log_every)
        results[name] = m
        by_step = ", ".join(f"{k}: {v:.2f}" for k, v in m["heldout_r2_by_step"].items())
        print(f"| {name} | {m['heldout_r2']:.3f} | {m['train_r2']:.3f} | {by_step} | "
              f"{m['seconds']:.0f} |")  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                 "results": results}, indent=2))  # fmt: skip
    name = "glimpse" if "glimpse" in results else next(iter(results))
    label = name.replace("+", "_")
    print(f"headline: {label}_heldout_r2={results[name]['heldout_r2']:.3f} (target >=0.9)")


if __name__ == "__main__":
    main()
