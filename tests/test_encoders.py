"""Encoder tests: every registered encoder gets the contract tests (timm's test_models.py
pattern), plus the behaviour each modality promises (direction in audio, colour in images),
the fused encoder, running normalization, and one-line errors at build time."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from encoders import (
    ENCODERS,
    FusedEncoderConfig,
    LogMelAudioConfig,
    RunningNorm,
    TextConfig,
    TimmImageConfig,
    build_encoder,
    build_fused_encoder,
    obs_to_tensors,
)
from encoders.audio import interaural_xcorr, mel_filterbank
from envs.vocab import VOCAB_SIZE, encode

ALL = ENCODERS.names()
IMAGE = [n for n in ALL if ENCODERS.get(n).modality == "image"]


def sample_batch(space: gym.Space, batch: int, seed: int = 0) -> torch.Tensor:
    """A batch of plausible observations of ``space`` (text rows always hold a word)."""
    rng = np.random.default_rng(seed)
    if isinstance(space, gym.spaces.Box):
        shape = (batch, *space.shape)
        if space.dtype == np.uint8:
            return torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
        low = np.where(np.isfinite(space.low), space.low, -3.0)
        high = np.where(np.isfinite(space.high), space.high, 3.0)
        return torch.from_numpy(rng.uniform(low, high, shape).astype(np.float32))
    if isinstance(space, gym.spaces.MultiDiscrete):
        ids = rng.integers(0, space.nvec, (batch, *space.shape))
        ids[:, 0] = rng.integers(1, space.nvec[0], batch)
        return torch.from_numpy(ids)
    if isinstance(space, gym.spaces.Discrete):
        return torch.from_numpy(rng.integers(space.start, space.start + space.n, batch))
    raise NotImplementedError(space)


def build_example(name: str, seed: int = 0):
    cls = ENCODERS.get(name)
    torch.manual_seed(seed)
    return build_encoder(name, cls.example_space(), cls.example_config())


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg, f"error message should be one line: {msg!r}"
    return msg


# --- the contract, for every registered encoder ----------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_shape_and_finite(name: str) -> None:
    enc = build_example(name)
    x = sample_batch(enc.space, 4)
    for mode in (True, False):
        enc.train(mode)
        out = enc(x)
        assert out.shape == (4, enc.embed_dim)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_gradient_reaches_every_trainable_parameter(name: str) -> None:
    enc = build_example(name).train()
    x = sample_batch(enc.space, 8)
    trainable = [(n, p) for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable, "an encoder should have something to train"
    reached: set[str] = set()
    # Two steps: zero-initialized gates (timm ResNets zero the last BatchNorm of each residual
    # block) leave the layers behind them an exactly-zero gradient until one update opens them.
    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        enc(x).square().mean().backward()
        for pname, p in trainable:
            assert p.grad is not None, f"{name}.{pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
            if p.grad.abs().sum() > 0:
                reached.add(pname)
        opt.step()
    missed = [n for n, _ in trainable if n not in reached]
    assert not missed, f"{name}: all-zero gradient for {missed}"


@pytest.mark.parametrize("name", ALL)
def test_tokens_come_from_the_same_pass_or_a_one_line_error(name: str) -> None:
    """Encoders that give tokens (for the attend/scan think inputs) give the embedding of
    ``forward`` with them, tokens ``(B, N, token_dim)`` that carry a gradient; others say in
    one line which encoders do."""
    enc = build_example(name).eval()
    x = sample_batch(enc.space, 3)
    if not enc.gives_tokens:
        with pytest.raises(ValueError) as err:
            enc.forward_tokens(x)
        assert "gives no tokens" in assert_one_line(err) and "cnn" in str(err.value)
        return
    emb, tokens = enc.forward_tokens(x)
    torch.testing.assert_close(emb, enc(x))
    assert tokens.dim() == 3 and tokens.shape[0] == 3 and tokens.shape[2] == enc.token_dim
    assert torch.isfinite(tokens).all()
    tokens.square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def test_cnn_tokens_are_feature_map_cells_with_their_positions() -> None:
    """One token per cell of the last feature map, in raster order, ending in the cell's
    (x, y) in [-1, 1]; a change in the top-left corner of the image leaves the bottom-right
    cells' tokens alone (a token says what is *where*)."""
    torch.manual_seed(0)
    space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    enc = build_encoder("cnn", space, {"channels": (8, 16, 32)}).eval()
    x = sample_batch(space, 1)
    _, tokens = enc.forward_tokens(x)
    assert tokens.shape == (1, 64, 32 + 2) and enc.token_dim == 34  # 8x8 cells
    xy = tokens[0, :, -2:]
    torch.testing.assert_close(xy[0], torch.tensor([-1.0, -1.0]))  # top-left cell first
    torch.testing.assert_close(xy[1], torch.tensor([-1.0 + 2 / 7, -1.0]))  # then along x
    torch.testing.assert_close(xy[-1], torch.tensor([1.0, 1.0]))
    y = x.clone()
    y[0, :4, :4] = 255 - y[0, :4, :4]
    _, moved = enc.forward_tokens(y)
    changed = (moved - tokens).abs().amax(-1)[0].reshape(8, 8)  # per cell
    assert changed[0, 0] > 0
    assert torch.all(changed[4:, 4:] == 0)


def test_cnn_mean_pool_embeds_what_not_where() -> None:
    """``pool="mean"``: the embedding is the head of the cells' average (the tokens' channels
    without their positions), so its size does not grow with the image; a bad value is one
    line naming the choices."""
    torch.manual_seed(0)
    small, large = (gym.spaces.Box(0, 255, (s, s, 3), np.uint8) for s in (64, 128))
    enc = build_encoder("cnn", small, {"channels": (8, 16, 32), "pool": "mean"}).eval()
    x = sample_batch(small, 2)
    emb, tokens = enc.forward_tokens(x)
    torch.testing.assert_close(emb, enc.head(tokens[..., :-2].mean(1)))
    n_params = sum(p.numel() for p in enc.parameters())
    bigger = build_encoder("cnn", large, {"channels": (8, 16, 32), "pool": "mean"})
    assert sum(p.numel() for p in bigger.parameters()) == n_params
    flat = build_encoder("cnn", small, {"channels": (8, 16, 32)})
    assert sum(p.numel() for p in flat.parameters()) > n_params  # 8*8*32 inputs to the head
    with pytest.raises(ValueError) as err:
        build_encoder("cnn", small, {"pool": "max"})
    msg = assert_one_line(err)
    assert "'max'" in msg and "flatten" in msg and "mean" in msg


def test_cnn_spatial_softmax_embeds_keypoint_coordinates() -> None:
    """``pool="spatial_softmax"``: the embedding is the head of each keypoint's expected cell
    centre, so a bright spot that moves across the frame moves the keypoints the same way,
    and the head's size is 2 x keypoints whatever the image size."""
    torch.manual_seed(0)
    space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    opts = {"channels": (8,), "pool": "spatial_softmax", "keypoints": 4}
    enc = build_encoder("cnn", space, opts).eval()
    assert enc.head[0].in_features == 8
    with torch.no_grad():  # keypoint 0 follows the red channel's first feature, sharply
        enc.keypoint_maps.weight.zero_()
        enc.keypoint_maps.bias.zero_()
        enc.conv[0].weight.zero_()
        enc.conv[0].bias.fill_(0.0)
        enc.conv[0].weight[0, 0, 1, 1] = 1.0  # feature 0 = red at the cell's centre pixel
        enc.keypoint_maps.weight[0, 0] = 50.0

    def keypoint0(row: int, col: int) -> torch.Tensor:
        x = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
        x[0, row : row + 2, col : col + 2, 0] = 255
        logits = enc.keypoint_maps(enc._feature_map(x)).flatten(2)  # (1, K, 32*32)
        return (logits.softmax(-1) @ enc.cell_xy[0])[0, 0]  # (x, y)

    top_left, bottom_right = keypoint0(2, 2), keypoint0(60, 58)
    assert torch.all(top_left < -0.8) and torch.all(bottom_right > 0.8)
    assert bottom_right[0] < bottom_right[1]  # column 58 is left of row 60
    x = sample_batch(space, 2)
    with torch.no_grad():
        p = enc.keypoint_maps(enc._feature_map(x)).flatten(2).softmax(-1)
        torch.testing.assert_close(enc(x), enc.head((p @ enc.cell_xy[0]).flatten(1)))
    large = gym.spaces.Box(0, 255, (128, 128, 3), np.uint8)
    n_params = sum(q.numel() for q in enc.parameters())
    assert sum(q.numel() for q in build_encoder("cnn", large, opts).parameters()) == n_params
    with pytest.raises(ValueError) as err:
        build_encoder("cnn", space, {"pool": "spatial_softmax", "keypoints": 0})
    assert "keypoints" in assert_one_line(err)
    with pytest.raises(ValueError) as err:  # would be silently ignored by another pool
        build_encoder("cnn", space, {"keypoints": 16})
    assert "pool='flatten'" in assert_one_line(err)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_under_seed(name: str) -> None:
    a, b = build_example(name, seed=3), build_example(name, seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    x = sample_batch(a.space, 4)
    assert torch.equal(a(x), b(x))  # train mode: running statistics update identically
    assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("name", ALL)
def test_safetensors_round_trip(name: str, tmp_path) -> None:
    enc = build_example(name, seed=1).train()
    enc(sample_batch(enc.space, 16, seed=1))  # move running statistics off their initial values
    path = tmp_path / "encoder.safetensors"
    save_file(enc.state_dict(), str(path))
    other = build_example(name, seed=2)
    other.load_state_dict(load_file(str(path)))
    x = sample_batch(enc.space, 4, seed=5)
    assert torch.equal(enc.eval()(x), other.eval()(x))


# --- build-time errors -------------------------------------------------------------------------


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ValueError) as err:
        build_encoder("no_such_encoder", gym.spaces.Box(0, 1, (3,)))
    msg = assert_one_line(err)
    assert "no_such_encoder" in msg and "cnn" in msg and "logmel" in msg


@pytest.mark.parametrize("name", IMAGE)
def test_image_encoder_rejects_a_vector_space(name: str) -> None:
    with pytest.raises(ValueError) as err:
        build_encoder(name, gym.spaces.Box(-1, 1, (7,), np.float32))
    assert "Box(shape=(7,)" in assert_one_line(err)


@pytest.mark.parametrize("name", IMAGE)
def test_image_encoder_rejects_float_pixels_outside_0_1(name: str) -> None:
    """A float image in [-1, 1] is not silently scaled as if it were [0, 1]."""
    with pytest.raises(ValueError) as err:
        build_encoder(name, gym.spaces.Box(-1.0, 1.0, (64, 64, 3), np.float32))
    assert "float in [0, 1]" in assert_one_line(err)


def test_audio_window_shorter_than_fft() -> None:
    space = gym.spaces.Box(-1, 1, (2, 100), np.float32)
    with pytest.raises(ValueError) as err:
        build_encoder("logmel", space, LogMelAudioConfig(n_fft=128))
    msg = assert_one_line(err)
    assert "100 samples" in msg and "n_fft=128" in msg


def test_too_many_mel_bands_for_the_fft() -> None:
    with pytest.raises(ValueError) as err:
        mel_filterbank(n_fft=64, n_mels=40, sample_rate=16000, f_min=0.0, f_max=8000.0)
    assert "n_mels=40" in assert_one_line(err)


@pytest.mark.parametrize(
    ("name", "space"),
    [
        ("logmel", gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)),
        ("text", gym.spaces.Box(-1, 1, (8,), np.float32)),
        ("proprio", gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)),
        ("embedding", gym.spaces.Box(-1, 1, (2,), np.float32)),
        ("cnn", gym.spaces.Box(0, 255, (4, 4, 3), np.uint8)),  # too small for 4 stride-2 convs
    ],
)
def test_space_mismatch_is_one_line(name: str, space: gym.Space) -> None:
    with pytest.raises(ValueError) as err:
        build_encoder(name, space)
    assert_one_line(err)


def test_config_dict_unknown_option_and_bad_value() -> None:
    space = gym.spaces.Box(-1, 1, (2, 320), np.float32)
    with pytest.raises(ValueError) as err:
        build_encoder("logmel", space, {"nfft": 64})
    assert "'nfft'" in assert_one_line(err) and "n_fft" in str(err.value)
    with pytest.raises(ValueError) as err:
        build_encoder("logmel", space, {"hop_length": 0})
    assert "hop_length" in assert_one_line(err)
    with pytest.raises(TypeError):
        build_encoder("logmel", space, TextConfig())


# --- audio: direction survives ---------------------------------------------------------------


def stereo_tone(side: str, samples: int = 320, freq: float = 600.0, delay: int = 8) -> torch.Tensor:
    """A tone louder and earlier (``delay`` samples, 0.5 ms) in the ear on ``side``."""
    t = np.arange(samples + delay) / 16000.0
    tone = np.sin(2 * np.pi * freq * t)
    near, far = 0.8 * tone[delay:], 0.3 * tone[:samples]  # far ear: quieter and later
    left, right = (near, far) if side == "left" else (far, near)
    return torch.tensor(np.stack([left, right])[None], dtype=torch.float32)  # (1, 2, S)


def test_audio_left_and_right_tones_differ() -> None:
    torch.manual_seed(0)
    enc = build_encoder("logmel", gym.spaces.Box(-1, 1, (2, 320), np.float32)).eval()
    left, right = stereo_tone("left"), stereo_tone("right")
    e_left, e_right = enc(left), enc(right)
    gap = (e_left - e_right).norm() / (0.5 * (e_left.norm() + e_right.norm()))
    assert gap > 0.05, f"left/right embeddings nearly equal (relative gap {gap:.4f})"
    # The features themselves carry direction with the right sign.
    ild_left = enc.features(left)[:, 2].mean()  # the left-minus-right dB plane
    ild_right = enc.features(right)[:, 2].mean()
    assert ild_left > 0 > ild_right
    assert int(interaural_xcorr(left, 16).argmax()) - 16 == 8  # left leads by 8 samples
    assert int(interaural_xcorr(right, 16).argmax()) - 16 == -8


def test_mel_filterbank_puts_a_tone_in_its_band() -> None:
    fb = mel_filterbank(n_fft=256, n_mels=32, sample_rate=16000, f_min=0.0, f_max=8000.0)
    freqs = np.linspace(0, 8000, 129)
    centers = freqs[fb.argmax(dim=1).numpy()]
    assert np.all(np.diff(centers) >= 0), "mel bands should rise in frequency"
    enc = build_encoder(
        "logmel",
        gym.spaces.Box(-1, 1, (1, 640), np.float32),
        LogMelAudioConfig(n_fft=256, hop_length=64, n_mels=32),
    )
    t = np.arange(640) / 16000.0
    tone = torch.tensor(np.sin(2 * np.pi * 2000.0 * t)[None, None], dtype=torch.float32)
    band = int(enc.logmel(tone)[0, 0].mean(dim=-1).argmax())
    assert abs(centers[band] - 2000.0) < 250.0


# --- images: colour survives; both layouts ----------------------------------------------------


def scene(colour: tuple[int, int, int], size: int = 64, layout: str = "hwc") -> torch.Tensor:
    img = np.full((size, size, 3), 90, np.uint8)  # grey floor
    img[20:36, 30:46] = colour  # the target
    x = torch.from_numpy(img)[None]
    return x.permute(0, 3, 1, 2).contiguous() if layout == "chw" else x


@pytest.mark.parametrize("name", IMAGE)
def test_image_target_colours_differ(name: str) -> None:
    cls = ENCODERS.get(name)
    torch.manual_seed(0)
    space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    enc = build_encoder(name, space, cls.example_config()).eval()
    red, green = enc(scene((220, 30, 30))), enc(scene((30, 200, 40)))
    gap = (red - green).norm() / (0.5 * (red.norm() + green.norm()))
    assert gap > 0.01, f"red/green embeddings nearly equal (relative gap {gap:.4f})"


@pytest.mark.parametrize("name", IMAGE)
def test_image_channels_first_space_matches_channels_last(name: str) -> None:
    """SB3 hands extractors channels-first images; the same weights must give the same result."""
    cls = ENCODERS.get(name)
    hwc = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    chw = gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)
    torch.manual_seed(0)
    a = build_encoder(name, hwc, cls.example_config()).eval()
    b = build_encoder(name, chw, cls.example_config()).eval()
    b.load_state_dict(a.state_dict())
    colour = (10, 120, 250)
    torch.testing.assert_close(a(scene(colour)), b(scene(colour, layout="chw")))


@pytest.mark.parametrize("name", IMAGE)
def test_image_float_pixels_match_uint8_and_are_left_untouched(name: str) -> None:
    """A float [0, 1] image space gives what uint8 / 255 gives, and the caller's tensor is
    not changed (the pixels are scaled in place, on a copy)."""
    cls = ENCODERS.get(name)
    torch.manual_seed(0)
    a = build_encoder(name, gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), cls.example_config())
    b = build_encoder(name, gym.spaces.Box(0.0, 1.0, (64, 64, 3), np.float32), cls.example_config())
    b.load_state_dict(a.state_dict())
    pixels = scene((10, 120, 250))
    floats = pixels.float() / 255.0
    before = floats.clone()
    torch.testing.assert_close(a.eval()(pixels), b.eval()(floats), rtol=1e-4, atol=1e-5)
    assert torch.equal(floats, before), "the encoder modified its input tensor"


# --- timm -----------------------------------------------------------------------------------

TINY = "test_resnet.r160_in1k"
IMG32 = gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)


def test_timm_variant_name_and_backbone_normalization() -> None:
    enc = build_encoder(f"timm/{TINY}", IMG32)
    assert enc.config.model_name == TINY
    import timm.data

    expected = timm.data.resolve_data_config(model=enc.backbone)
    torch.testing.assert_close(enc.mean.flatten(), torch.tensor(expected["mean"]))
    torch.testing.assert_close(enc.std.flatten(), torch.tensor(expected["std"]))
    assert "mean" not in enc.state_dict(), "normalization follows from the model name"
    assert enc.embed_dim == enc.backbone.num_features


def test_timm_unknown_model_is_one_line() -> None:
    with pytest.raises(ValueError) as err:
        build_encoder("timm/not_a_model_xyz", IMG32)
    assert "not_a_model_xyz" in assert_one_line(err)


def test_timm_pretrained_without_hub_warns_and_continues(monkeypatch) -> None:
    import huggingface_hub.constants

    # Offline mode makes the failed download immediate instead of ~45 s of retries.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.warns(RuntimeWarning, match="RANDOM initialization"):
        enc = build_encoder("timm", IMG32, TimmImageConfig(model_name=TINY, pretrained=True))
    assert enc(sample_batch(IMG32, 2)).shape == (2, enc.embed_dim)


def test_timm_pretrained_without_hub_and_frozen_is_one_line(monkeypatch) -> None:
    """Frozen, a random backbone would be a fixed random projection: refuse, don't warn."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError) as err:
        build_encoder("timm", IMG32, TimmImageConfig(model_name=TINY, pretrained=True, freeze=True))
    assert "freeze" in assert_one_line(err) and "pretrained_file" in str(err.value)


def test_timm_fixed_input_size_is_one_line() -> None:
    """A ViT built for 224 x 224 inputs (timm asserts the size): the one-line error says to
    set image_size."""
    with pytest.raises(ValueError) as err:
        build_encoder("timm/vit_tiny_patch16_224", IMG32)
    assert "image_size" in assert_one_line(err)


def test_timm_pretrained_file_is_loaded(tmp_path) -> None:
    import timm

    torch.manual_seed(7)
    source = timm.create_model(TINY, pretrained=False, num_classes=0)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    torch.manual_seed(8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading a local file must not warn
        enc = build_encoder(
            "timm", IMG32, TimmImageConfig(model_name=TINY, pretrained_file=str(path))
        )
    for k, v in source.state_dict().items():
        assert torch.equal(enc.backbone.state_dict()[k], v), k
    with pytest.raises(ValueError) as err:
        build_encoder(
            "timm",
            IMG32,
            TimmImageConfig(model_name=TINY, pretrained_file=str(tmp_path / "missing.pth")),
        )
    assert_one_line(err)


def test_timm_freeze_keeps_backbone_fixed() -> None:
    enc = build_encoder("timm", IMG32, TimmImageConfig(model_name=TINY, freeze=True, embed_dim=16))
    enc.train()
    assert not enc.backbone.training, "a frozen backbone keeps its BatchNorm statistics"
    before = {k: v.clone() for k, v in enc.backbone.state_dict().items()}
    enc(sample_batch(IMG32, 4)).sum().backward()
    assert all(p.grad is None for p in enc.backbone.parameters())
    assert all(p.grad is not None for p in enc.proj.parameters())
    for k, v in enc.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("model_name", ["resnet10t", "mobilenetv3_small_050"])
def test_timm_small_backbones_on_64px(model_name: str) -> None:
    space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    enc = build_encoder(f"timm/{model_name}", space).eval()
    out = enc(sample_batch(space, 2))
    assert out.shape == (2, enc.embed_dim) and torch.isfinite(out).all()


# --- proprio/touch running normalization --------------------------------------------------------


def test_running_norm_updates_only_in_train_mode_and_is_saved(tmp_path) -> None:
    rng = np.random.default_rng(0)
    norm = RunningNorm((3,))
    batches = [
        torch.tensor(rng.normal([1, -5, 100], [0.1, 2, 30], (50, 3)), dtype=torch.float32)
        for _ in range(4)
    ]
    for b in batches:
        norm(b)
    data = torch.cat(batches)
    torch.testing.assert_close(norm.mean, data.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.var, data.var(0, unbiased=False), rtol=1e-3, atol=1e-4)
    assert float(norm.count) == 200
    frozen = {k: v.clone() for k, v in norm.state_dict().items()}
    norm.eval()
    norm(batches[0] * 100)
    assert all(torch.equal(v, frozen[k]) for k, v in norm.state_dict().items())
    out = norm(data)
    assert out.mean(0).abs().max() < 1e-3 and (out.std(0) - 1).abs().max() < 1e-2

    enc = build_encoder("proprio", gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)).train()
    enc(data)
    save_file(enc.state_dict(), str(tmp_path / "p.safetensors"))
    loaded = load_file(str(tmp_path / "p.safetensors"))
    torch.testing.assert_close(loaded["norm.mean"], data.mean(0), rtol=1e-4, atol=1e-4)
    assert float(loaded["norm.count"]) == 200


# --- text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["gru", "mean"])
def test_text_reads_words_and_masks_padding(reader: str) -> None:
    torch.manual_seed(0)
    enc = build_encoder(
        "text", gym.spaces.MultiDiscrete([VOCAB_SIZE] * 8), TextConfig(reader=reader)
    ).eval()

    def embed(sentence: str, length: int = 8) -> torch.Tensor:
        return enc(torch.from_numpy(encode(sentence, length))[None])

    red, blue = embed("reach the red ball"), embed("reach the blue ball")
    assert not torch.allclose(red, blue)
    empty = enc(torch.zeros(2, 8, dtype=torch.long))
    assert torch.equal(empty[0], empty[1])
    if reader == "gru":  # word order matters to the recurrent reader
        assert not torch.allclose(embed("red left"), embed("left red"))


# --- fused encoder -----------------------------------------------------------------------------


def sensor_space(size: int = 32) -> gym.spaces.Dict:
    return gym.spaces.Dict(
        {
            "image": gym.spaces.Box(0, 255, (size, size, 3), np.uint8),
            "audio": gym.spaces.Box(-1, 1, (2, 320), np.float32),
            "proprio": gym.spaces.Box(-np.inf, np.inf, (6,), np.float32),
            "touch": gym.spaces.Box(0, np.inf, (4,), np.float32),
            "text": gym.spaces.MultiDiscrete([VOCAB_SIZE] * 6),
        }
    )


def test_fused_defaults_and_batch_shapes() -> None:
    space = sensor_space()
    torch.manual_seed(0)
    enc = build_fused_encoder(space).eval()
    assert enc.config.encoders == {
        "audio": "logmel",
        "image": "cnn",
        "proprio": "proprio",
        "text": "text",
        "touch": "touch",
    }
    assert enc.embed_dim == 256
    space.seed(0)
    frames = [space.sample() for _ in range(6)]
    one = enc(frames[0])  # numpy, unbatched
    assert one.shape == (256,)
    seq = {k: np.stack([f[k] for f in frames]).reshape(2, 3, *space[k].shape) for k in space.spaces}
    out = enc(obs_to_tensors(seq))  # (T=2, B=3, ...)
    assert out.shape == (2, 3, 256)
    torch.testing.assert_close(out[0, 0], one)


def test_fused_concat_override_and_subset() -> None:
    space = sensor_space()
    cfg = FusedEncoderConfig(
        encoders={"image": f"timm/{TINY}"},
        configs={"text": TextConfig(reader="mean", embed_dim=8), "proprio": {"embed_dim": 16}},
        keys=("image", "proprio", "text"),
        embed_dim=None,
    )
    enc = build_fused_encoder(space, cfg)
    assert enc.keys == ("image", "proprio", "text")
    assert enc.embed_dim == enc.encoders["image"].embed_dim + 16 + 8
    obs = {k: sample_batch(space[k], 2) for k in ("image", "proprio", "text")}  # no audio needed
    assert enc(obs).shape == (2, enc.embed_dim)


def test_fused_config_json_round_trip_rebuilds_the_same_module(tmp_path) -> None:
    space = sensor_space()
    cfg = FusedEncoderConfig(configs={"audio": LogMelAudioConfig(n_mels=16, embed_dim=32)})
    torch.manual_seed(0)
    enc = build_fused_encoder(space, cfg).train()
    obs = {k: sample_batch(space[k], 8) for k in space.spaces}
    enc(obs)
    text = json.dumps(enc.config.to_dict())
    save_file(enc.state_dict(), str(tmp_path / "model.safetensors"))
    rebuilt = build_fused_encoder(space, FusedEncoderConfig.from_dict(json.loads(text)))
    rebuilt.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    assert rebuilt.config == enc.config
    torch.testing.assert_close(enc.eval()(obs), rebuilt.eval()(obs))


def test_fused_errors_are_one_line() -> None:
    space = sensor_space()
    with pytest.raises(ValueError) as err:
        build_fused_encoder(space, FusedEncoderConfig(encoders={"smell": "mlp"}))
    assert "'smell'" in assert_one_line(err)
    with pytest.raises(ValueError) as err:
        build_fused_encoder(gym.spaces.Dict({"weird": gym.spaces.MultiBinary(3)}))
    assert "'weird'" in assert_one_line(err)
    enc = build_fused_encoder(space)
    obs = {k: sample_batch(space[k], 2) for k in space.spaces}
    with pytest.raises(ValueError) as err:
        enc({k: v for k, v in obs.items() if k != "audio"})
    assert "'audio'" in assert_one_line(err)
    with pytest.raises(ValueError) as err:
        enc({**obs, "proprio": sample_batch(space["proprio"], 3)})
    assert_one_line(err)


def test_a_broken_plugin_does_not_break_the_registry(monkeypatch) -> None:
    from importlib.metadata import EntryPoint

    import envs.registry as registry_module

    fake = [
        EntryPoint("broken", "no_such_module_xyz:Thing", "mindloop.test"),
        EntryPoint("fine", "collections:OrderedDict", "mindloop.test"),
    ]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: fake)
    reg = registry_module.Registry("thing", entry_point_group="mindloop.test")
    with pytest.warns(RuntimeWarning, match="no_such_module_xyz"):
        assert reg.names() == ["fine"]
    with pytest.raises(ValueError) as err:
        reg.get("broken")
    assert "failed to load" in assert_one_line(err)


def test_a_plugin_that_is_not_an_encoder_is_reported_not_registered(monkeypatch) -> None:
    """An entry point naming a plain function (not an ``Encoder`` subclass) would be listed and
    then fail at build time naming neither it nor the fix; it is a broken plug-in instead,
    and the registry-wide tests never see it."""
    from importlib.metadata import EntryPoint

    import envs.registry as registry_module
    from encoders.base import Encoder

    fake = [
        EntryPoint("notenc", "os.path:join", "mindloop.test"),
        EntryPoint("enc", "encoders.image:CNNImageEncoder", "mindloop.test"),
    ]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: fake)
    reg = registry_module.Registry("thing", "mindloop.test", plugin_base=lambda: Encoder)
    with pytest.warns(RuntimeWarning, match="not a subclass of encoders.base.Encoder"):
        assert reg.names() == ["enc"]
    with pytest.raises(ValueError) as err:
        reg.get("notenc")
    assert "failed to load" in assert_one_line(err) and "os.path:join" in str(err.value)


def test_fused_command_line_options_and_tyro() -> None:
    import tyro

    cfg = tyro.cli(
        FusedEncoderConfig,
        args=[
            "--encoders",
            "image",
            f"timm/{TINY}",
            "--options",
            "image.freeze",
            "True",
            "image.image_size",
            "48",
            "proprio.hidden",
            "(8, 8)",
            "proprio.activation",
            "tanh",
        ],
    )
    space = sensor_space()
    enc = build_fused_encoder(space, cfg)
    image, proprio = enc.encoders["image"], enc.encoders["proprio"]
    assert image.config.freeze and image.config.image_size == 48
    assert proprio.config.hidden == (8, 8) and proprio.config.activation == "tanh"
    assert enc.config.options == {}, "the resolved config folds options into configs"
    obs = {k: sample_batch(space[k], 2) for k in space.spaces}
    assert enc(obs).shape == (2, enc.embed_dim)
    with pytest.raises(ValueError) as err:
        build_fused_encoder(space, FusedEncoderConfig(options={"image": "1"}))
    assert "KEY.FIELD" in assert_one_line(err)
    with pytest.raises(ValueError) as err:
        build_fused_encoder(space, FusedEncoderConfig(options={"proprio.nope": "1"}))
    assert "'nope'" in assert_one_line(err)
