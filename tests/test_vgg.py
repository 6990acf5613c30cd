"""VGG16 contract: the three entry points' shapes, layer listings, heads, and the checkpoint round trip."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from facesearch.checkpoint import Preprocess, load_checkpoint, preprocess_batch, save_checkpoint
from facesearch.models import VGG16, VGGConfig

torch.set_num_threads(2)


@pytest.mark.parametrize("size, side", [(32, 1), (112, 3), (224, 7)])
@pytest.mark.parametrize("head", ["softmax", "cosface", "arcface"])
def test_entry_point_shapes(size, side, head):
    # Shapes propagate on the meta device without computing anything: 224 px costs nothing on a 2-core CPU.
    with torch.device("meta"):
        model = VGG16(VGGConfig(num_classes=5, input_size=size, head=head)).eval()
        x = torch.empty(2, 3, size, size)
    assert model.forward_features(x).shape == (2, 512, side, side)
    assert model.forward_embedding(x).shape == (2, 4096)
    assert model(x).shape == (2, 5)
    assert model.fc6.in_features == 512 * side * side  # 25,088 only at 224 px: no upsampled 7x7 map


def test_real_forward_is_finite_and_batch_independent_in_eval():
    torch.manual_seed(0)
    model = VGG16(VGGConfig(num_classes=5, input_size=32, fc_width=32)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, one = model(x), model(x[:1])
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits[:1], one, rtol=1e-4, atol=1e-5)


def test_layer_listings():
    model = VGG16(VGGConfig(num_classes=3, input_size=32, fc_width=8))
    convs = model.conv_layers()
    assert [n for n, _ in convs][:3] == ["conv1_1", "conv1_2", "conv2_1"] and convs[-1][0] == "conv5_3"
    assert len(convs) == 13 and all(isinstance(m, torch.nn.Conv2d) for _, m in convs)
    assert [n for n, _ in model.fc_layers()] == ["fc6", "fc7", "fc8"]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    plain = VGG16(VGGConfig(num_classes=3, input_size=32, fc_width=8, batch_norm=False))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())


def test_narrowed_convs_keep_the_vgg16_layout_and_round_trip(tmp_path):
    """conv_width scales every conv's channels; depth, pooling, layer names and the checkpoint stay the same."""
    config = VGGConfig(num_classes=3, input_size=64, fc_width=8, conv_width=0.25)
    model = VGG16(config).eval()
    convs = model.conv_layers()
    assert [m.out_channels for _, m in convs] == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    assert [n for n, _ in convs][-1] == "conv5_3" and model.fc6.in_features == 128 * 2 * 2
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 128, 2, 2)
        loaded = load_checkpoint(save_checkpoint(tmp_path / "n.pt", model, ["a", "b", "c"], Preprocess(64)))
        assert loaded.config.conv_width == 0.25 and torch.equal(loaded.model(x), model(x))
    with pytest.raises(ValueError, match="conv_width"):
        VGGConfig(num_classes=3, conv_width=0.001)


def test_embedding_pre_and_post_relu():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    post = VGG16(VGGConfig(num_classes=3, input_size=32, fc_width=16)).eval()
    pre = VGG16(VGGConfig(num_classes=3, input_size=32, fc_width=16, embedding="pre_relu")).eval()
    pre.load_state_dict(post.state_dict())
    with torch.no_grad():
        e_post, e_pre = post.forward_embedding(x), pre.forward_embedding(x)
    assert (e_post >= 0).all() and (e_pre < 0).any()
    torch.testing.assert_close(e_post, e_pre.clamp(min=0))


def test_cosface_margin_applies_to_true_class_only():
    torch.manual_seed(0)
    config = VGGConfig(num_classes=4, input_size=32, fc_width=16, head="cosface")
    model = VGG16(config).eval()
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 3])
    with torch.no_grad():
        diff = model(x) - model(x, y)
    expected = config.cosface_scale * config.cosface_margin * torch.nn.functional.one_hot(y, 4).float()
    torch.testing.assert_close(diff, expected)


def test_arcface_margin_adds_to_the_true_class_angle_only():
    torch.manual_seed(0)
    config = VGGConfig(num_classes=4, input_size=32, fc_width=16, head="arcface", arcface_margin=0.3)
    model = VGG16(config).eval()
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 3])
    with torch.no_grad():
        plain, margin = model(x) / config.cosface_scale, model(x, y) / config.cosface_scale
    true = torch.nn.functional.one_hot(y, 4).bool()
    torch.testing.assert_close(margin[~true], plain[~true])  # other classes untouched
    theta = torch.acos(plain[true])  # random weights: angles near pi/2, far from the pi - m fallback
    torch.testing.assert_close(margin[true], torch.cos(theta + 0.3), atol=1e-5, rtol=0)
    assert (margin[true] < plain[true]).all()


def test_arcface_falls_back_past_pi_minus_m():
    """Beyond theta = pi - m, cos(theta + m) would grow again; the head keeps the penalty monotone instead."""
    from facesearch.models.vgg import MarginHead

    head = MarginHead(2, 2, "arcface", scale=1.0, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    angles = torch.tensor([2.0, 2.5, 2.9, 3.1])  # the last three lie past pi - 0.5 = 2.64
    x = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    out = head(x, torch.zeros(4, dtype=torch.long))[:, 0]
    assert torch.all(out[1:] < out[:-1])  # still falling with the angle
    torch.testing.assert_close(out[2:], torch.cos(angles[2:]) - math.sin(math.pi - 0.5) * 0.5)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="head"):
        VGGConfig(num_classes=3, head="arcface-ish")
    with pytest.raises(ValueError, match="input_size 16"):
        VGGConfig(num_classes=3, input_size=16)
    with pytest.raises(ValueError, match="ArcFace margin"):
        VGGConfig(num_classes=3, head="arcface", arcface_margin=2.0)


def test_checkpoint_round_trip_reproduces_outputs(tmp_path):
    torch.manual_seed(0)
    model = VGG16(VGGConfig(num_classes=3, input_size=32, fc_width=16, head="cosface")).eval()
    with torch.no_grad():  # move BN statistics off their defaults so they are part of what is checked
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
    prep = Preprocess(32, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    path = save_checkpoint(tmp_path / "best.pt", model, ["a", "b", "c"], prep, epoch=2, step=7)
    loaded = load_checkpoint(path)
    assert loaded.config == model.config and loaded.class_names == ["a", "b", "c"]
    assert loaded.preprocess == prep and loaded.extra["step"] == 7 and not loaded.model.training
    images = [Image.new("RGB", (40, 30), (200, 100, 50)), Image.new("L", (32, 32), 128)]
    x = preprocess_batch(images, loaded.preprocess)
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x[0, 0, 0, 0], torch.tensor((200 / 255 - 0.4) / 0.2))
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
        assert torch.equal(model.forward_embedding(x), loaded.model.forward_embedding(x))
    assert loaded.fingerprint == load_checkpoint(tmp_path).fingerprint  # a run dir finds its checkpoint


def test_fingerprint_tells_weights_apart(tmp_path):
    prep = Preprocess(32)
    a = VGG16(VGGConfig(num_classes=3, input_size=32, fc_width=8))
    b = VGG16(VGGConfig(num_classes=3, input_size=32, fc_width=8))
    fa = load_checkpoint(save_checkpoint(tmp_path / "a.pt", a, ["x", "y", "z"], prep)).fingerprint
    fb = load_checkpoint(save_checkpoint(tmp_path / "b.pt", b, ["x", "y", "z"], prep)).fingerprint
    assert fa != fb and len(fa) == 16


def test_presets_are_constructors_and_from_dict_refuses_unknown_fields():
    faces = VGGConfig.faces(5, 64, head="cosface", dropout=None)  # None: the preset's value
    assert (faces.num_classes, faces.input_size, faces.fc_width, faces.head, faces.dropout) == (5, 64, 4096, "cosface", 0.5)
    cifar = VGGConfig.cifar10()
    assert (cifar.num_classes, cifar.input_size, cifar.fc_width, cifar.dropout) == (10, 32, 512, 0.0)
    assert VGGConfig.for_kind("cifar10", 10, 32, fc_width=64).fc_width == 64
    assert VGGConfig.from_dict(faces.to_dict()) == faces
    old = {k: v for k, v in faces.to_dict().items() if k != "arcface_margin"}  # a checkpoint from before ArcFace
    assert VGGConfig.from_dict(old) == faces
    with pytest.raises(ValueError, match="does not know"):
        VGGConfig.from_dict({**faces.to_dict(), "attention": True})


def test_fc_batch_norm_normalises_the_embedding_and_old_configs_load_without_it(tmp_path):
    torch.manual_seed(0)
    config = VGGConfig(num_classes=4, input_size=32, fc_width=16, conv_width=0.25, dropout=0.0, head="cosface",
                       embedding="pre_relu", fc_batch_norm=True)
    model = VGG16(config).train()
    x = torch.randn(32, 3, 32, 32) * 3 + 1
    with torch.no_grad():
        fc7 = model._fc7(x)  # training mode: the batch's own statistics
    torch.testing.assert_close(fc7.mean(0), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(fc7.std(0, unbiased=False), torch.ones(16), atol=1e-3, rtol=0)
    assert isinstance(model.fc6_bn, torch.nn.BatchNorm1d) and isinstance(model.fc7_bn, torch.nn.BatchNorm1d)
    assert [m for _, m in model.fc_layers()][:2] == [model.fc6_bn, model.fc7_bn]  # explain reads the embedding
    # the running statistics travel in the checkpoint: a reloaded model embeds the same in eval mode
    model.eval()
    path = save_checkpoint(tmp_path / "m.pt", model, ["a", "b", "c", "d"], Preprocess(32))
    again = load_checkpoint(path, "cpu").model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again.forward_embedding(x), model.forward_embedding(x))
    # a checkpoint written before the field existed is the classic head, without BatchNorm
    old = {k: v for k, v in config.to_dict().items() if k != "fc_batch_norm"}
    assert VGGConfig.from_dict(old).fc_batch_norm is False
    assert isinstance(VGG16(VGGConfig.from_dict(old)).fc7_bn, torch.nn.Identity)


def test_a_distilled_fc7_has_its_own_width_an_optional_projection_and_maybe_no_head():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32)
    narrow = VGG16(VGGConfig(num_classes=4, input_size=32, fc_width=64, fc7_width=16, conv_width=0.25,
                             embedding="pre_relu", fc_batch_norm=True)).eval()
    logits, student = narrow(x, distill=True)
    assert logits.shape == (3, 4) and student.shape == (3, 16) and narrow.forward_embedding(x).shape == (3, 16)
    assert torch.allclose(student, narrow.forward_embedding(x))  # fc7 itself is what the teacher trains
    projected = VGG16(VGGConfig(num_classes=4, input_size=32, fc_width=64, conv_width=0.25, projection=8)).eval()
    assert projected(x, distill=True)[1].shape == (3, 8) and projected.forward_embedding(x).shape == (3, 64)
    headless = VGG16(VGGConfig(num_classes=0, input_size=32, fc_width=64, fc7_width=16, conv_width=0.25)).eval()
    assert headless(x, distill=True)[0] is None and [n for n, _ in headless.fc_layers()] == ["fc6", "fc7"]
    with pytest.raises(ValueError, match="no identity head"):
        headless(x)
    with pytest.raises(ValueError, match="at least 2"):
        VGGConfig(num_classes=1)
