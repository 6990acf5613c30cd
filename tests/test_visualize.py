"""facesearch.visualize on tiny models: hooks as resources, heat maps, layer measures, figures."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from facesearch.visualize.cam import attribute, channel_scores, layer_cams, overlay
from facesearch.visualize.feature_maps import choose_channels, draw_feature_grid, feature_grid
from facesearch.visualize.hooks import ChannelAblation, Recorder, conv_sites, fc_sites
from facesearch.visualize.layers import layer_ablation, layer_similarity
from facesearch.visualize.pair import draw_pair, pair_view
from facesearch.visualize.targets import ClassLogit, CosineTo, MatchMargin, centroid


class TinyNet(nn.Module):
    """A 4-conv VGG-like net with the VGG16 model's visualizer contract, 32 px inputs."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        widths = [3, 8, 8, 16, 16]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.fc6 = nn.Linear(16 * 8 * 8, 24)
        self.fc7 = nn.Linear(24, 24)
        self.head = nn.Linear(24, 5)
        self.eval()

    def forward_embedding(self, x):
        return self.fc7(F.relu(self.fc6(self.features(x).flatten(1))))

    def forward(self, x):
        return self.head(F.relu(self.forward_embedding(x)))

    def conv_layers(self):
        return [(f"conv{i + 1}", m) for i, m in enumerate(m for m in self.features if isinstance(m, nn.Conv2d))]

    def fc_layers(self):
        return [("fc6", self.fc6), ("fc7", self.fc7), ("fc8", self.head)]


def sites_of(model):
    return conv_sites(model, model.conv_layers()) + fc_sites(model.fc_layers())


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


@pytest.fixture(scope="module")
def net():
    return TinyNet()


@pytest.fixture(scope="module")
def images():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_conv_sites_read_the_relu_after_each_conv(net):
    sites = conv_sites(net, net.conv_layers())
    assert [s.name for s in sites] == ["conv1", "conv2", "conv3", "conv4"]
    assert all(isinstance(s.module, nn.ReLU) for s in sites)


def test_recorder_removes_its_hooks_after_use_and_after_an_error(net, images):
    with Recorder(sites_of(net)) as recorder:
        assert not no_hooks(net)
        net.forward_embedding(images[:1])
    assert no_hooks(net)
    assert list(recorder.outputs) == ["conv1", "conv2", "conv3", "conv4", "fc6", "fc7"]  # fc8 not reached
    with pytest.raises(RuntimeError, match="boom"):
        with Recorder(sites_of(net)):
            raise RuntimeError("boom")
    assert no_hooks(net)


def test_ablation_removes_its_hooks_after_an_error_inside_the_forward(net, images):
    site = sites_of(net)[1]
    with pytest.raises(ValueError):
        with ChannelAblation([(site, torch.ones(2, 3))]):  # 3 mask columns for 8 channels: fails in the hook
            net(images[:1])
    assert no_hooks(net)


def test_heat_maps_have_the_input_size_and_lie_in_unit_range(net, images):
    attribution = attribute(net, sites_of(net), images[:2], ClassLogit(1))
    maps = layer_cams(attribution)
    assert list(maps) == ["conv1", "conv2", "conv3", "conv4"]
    for heat in maps.values():
        assert heat.shape == (2, 32, 32)
        assert heat.min() >= 0.0 and heat.max() <= 1.0
        assert heat.max() == pytest.approx(1.0)  # scaled by its peak
    for method in ("gradcam", "layercam"):
        assert layer_cams(attribution, method)["conv4"].shape == (2, 32, 32)


def test_same_input_same_explanation(net, images):
    x, target = images[:1], MatchMargin(torch.randn(24), torch.randn(24))
    runs = []
    for _ in range(2):
        a = attribute(net.forward_embedding, sites_of(net), x, target)
        ablation = layer_ablation(net.forward_embedding, sites_of(net), x, target, a, fraction=0.25, seeds=3)
        runs.append((layer_cams(a), ablation))
    (maps1, ab1), (maps2, ab2) = runs
    for name in maps1:
        np.testing.assert_array_equal(maps1[name], maps2[name])
    np.testing.assert_array_equal(ab1.top, ab2.top)
    np.testing.assert_array_equal(ab1.random_mean, ab2.random_mean)


def test_randomised_weights_change_the_maps(net, images):
    """Adebayo et al. (2018): an explanation that survives randomising the model explains nothing."""
    random_net = copy.deepcopy(net)
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in random_net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * p.std().clamp_min(0.05))
    x = images[:1]
    trained = layer_cams(attribute(net, sites_of(net), x, ClassLogit(0)))
    randomised = layer_cams(attribute(random_net, sites_of(random_net), x, ClassLogit(0)))
    for name in ("conv3", "conv4"):
        r = np.corrcoef(trained[name].ravel(), randomised[name].ravel())[0, 1]
        assert r < 0.8, (name, r)


class DecisiveChain(nn.Module):
    """1x1-conv chain whose every layer passes the signal on through all channels equally — except layer
    ``decisive``, which passes it through only 2 of its 20 channels. Switching off 10 % (2) channels
    anywhere else costs 10 % of the output; at the decisive layer the right 2 cost all of it."""

    def __init__(self, decisive: int, depth: int = 5, width: int = 20) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        for i in range(depth):
            conv = nn.Conv2d(3 if i == 0 else width, width, 1)
            weight = torch.full((width, conv.in_channels), 1.0 / conv.in_channels)
            if i == decisive:
                weight[2:] = 0.0  # only channels 0 and 1 carry the signal
            if i == decisive + 1:
                weight *= width / 2  # restore the scale lost by the 18 silent channels
            with torch.no_grad():
                conv.weight.copy_(weight.view(width, -1, 1, 1))
                conv.bias.zero_()
            self.convs.append(conv)
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(depth))
        self.out = nn.Linear(width, 1)
        with torch.no_grad():
            self.out.weight.fill_(1.0 / width)
            self.out.bias.zero_()

    def forward(self, x):
        for conv, relu in zip(self.convs, self.relus):
            x = relu(conv(x))
        return self.out(x.mean(dim=(2, 3)))

    def conv_layers(self):
        return [(f"c{i}", c) for i, c in enumerate(self.convs)]


@pytest.mark.parametrize("decisive", [1, 3])
def test_ablation_ranks_the_deciding_layer_first(decisive):
    model = DecisiveChain(decisive).eval()
    sites = conv_sites(model, model.conv_layers())
    x = torch.rand(1, 3, 6, 6) + 0.5  # positive, so every channel carries signal
    target = ClassLogit(0)
    attribution = attribute(model, sites, x, target)
    ablation = layer_ablation(model, sites, x, target, attribution, fraction=0.1, seeds=5)
    assert ablation.ranking()[0] == f"c{decisive}"
    assert ablation.top[decisive] == pytest.approx(ablation.base, rel=1e-4)  # the decision is gone
    others = np.delete(ablation.top, decisive)
    np.testing.assert_allclose(others, 0.1 * ablation.base, rtol=1e-3)  # 2 of 20 equal channels
    assert ablation.excess[decisive] > 0.5 * ablation.base
    assert (ablation.ablated == 2).all()
    # where all 20 channels are equal, any 2 random ones remove what the top 2 do, with no spread between draws
    np.testing.assert_allclose(np.delete(ablation.random_mean, decisive), 0.1 * ablation.base, rtol=1e-3)
    np.testing.assert_allclose(np.delete(ablation.random_sd, decisive), 0, atol=1e-6)


def test_channel_ablation_in_one_pass_equals_one_layer_at_a_time(net, images):
    sites = sites_of(net)
    masks = [torch.bernoulli(torch.full((3, 8), 0.7), generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    with torch.no_grad():
        with ChannelAblation([(sites[0], masks[0]), (sites[1], masks[1])]) as ablation:
            both = net(images[:1])  # (1 + 3 + 3, 5)
        with ChannelAblation([(sites[1], masks[1])]):
            alone = net(images[:1])
    assert both.shape[0] == 7
    torch.testing.assert_close(both[ablation.slices["conv2"]], alone[1:])
    torch.testing.assert_close(both[:1], net(images[:1]).detach())


def test_several_targets_from_one_forward_equal_separate_passes(net, images):
    from facesearch.visualize.cam import attribute_many

    targets = [ClassLogit(0), ClassLogit(3)]
    together = attribute_many(net, sites_of(net), images[:2], targets)
    for target, joint in zip(targets, together):
        alone = attribute(net, sites_of(net), images[:2], target)
        torch.testing.assert_close(joint.scores, alone.scores)
        for a, b in zip(joint.gradients, alone.gradients):
            torch.testing.assert_close(a, b)


def test_channel_scores_are_gradient_times_activation(net, images):
    attribution = attribute(net, sites_of(net), images[:1], ClassLogit(2))
    scores = channel_scores(attribution)
    act, grad = attribution.activations[0], attribution.gradients[0]
    torch.testing.assert_close(scores[0], (act * grad).sum(dim=(2, 3)))
    assert attribution.names[-2:] == ["fc7", "fc8"]
    assert scores[-2].shape == (1, 24) and scores[-1].shape == (1, 5)  # one score per unit


def test_targets():
    e = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    torch.testing.assert_close(CosineTo(torch.tensor([1.0, 0.0]))(e), torch.tensor([0.6, 1.0]))
    torch.testing.assert_close(MatchMargin(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))(e), torch.tensor([-0.2, 1.0]))
    torch.testing.assert_close(centroid(torch.tensor([[2.0, 0.0], [0.0, 5.0]])), torch.tensor([0.5**0.5, 0.5**0.5]))


def test_layer_similarity_ranks_the_identity_the_query_belongs_to(net, images):
    x = images[:1]
    candidates = [("self", torch.cat([x, x])), ("b", images[1:3]), ("c", images[3:5])]
    sim = layer_similarity(net.forward_embedding, sites_of(net), x, candidates)
    assert sim.names == ["conv1", "conv2", "conv3", "conv4", "fc6", "fc7"]
    assert sim.similarity.shape == (6, 3)
    np.testing.assert_allclose(sim.similarity[:, 0], 1.0, atol=1e-5)  # the query is the match's centroid
    assert (sim.rank == 1).all() and sim.emerges_at == "conv1"
    assert sim.embeddings.shape == (7, 24)  # query + 3 identities x 2 faces


def test_feature_grid_rules_and_png(net, images, tmp_path):
    grid = feature_grid(net, sites_of(net), images[:1], n=5, rule="strongest")
    assert grid.names == ["conv1", "conv2", "conv3", "conv4"]
    means = [m.mean(axis=(1, 2)) for m in grid.maps]
    assert all((np.diff(m) <= 1e-6).all() for m in means)  # strongest first
    act = torch.rand(30, 4, 4)
    np.testing.assert_array_equal(choose_channels(act, 5, "random", seed=7), choose_channels(act, 5, "random", seed=7))
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    path = draw_feature_grid(grid, tmp_path / "grid.png", image=image)
    width, height = Image.open(path).size
    assert width > 300 and height > 4 * 64


def test_feature_grid_has_13_rows_for_vgg16(tmp_path):
    from facesearch.models.vgg import VGG16, VGGConfig

    model = VGG16(VGGConfig(num_classes=3, input_size=32, fc_width=16)).eval()
    grid = feature_grid(model.forward, conv_sites(model, model.conv_layers()), torch.randn(1, 3, 32, 32), n=10)
    assert len(grid.names) == 13 and grid.names[0] == "conv1_1" and grid.names[-1] == "conv5_3"
    assert all(len(c) == 10 for c in grid.channels)
    assert Image.open(draw_feature_grid(grid, tmp_path / "vgg.png")).size[1] > 13 * 64


def test_pair_view_maps_and_correspondences(net, images, tmp_path):
    view = pair_view(net.forward_embedding, sites_of(net), images[:1], images[1:2], fuse_last=2, n_matches=5)
    assert view.query_map.shape == view.gallery_map.shape == (32, 32)
    assert 0 <= view.query_map.min() and view.query_map.max() <= 1
    assert len(view.matches) <= 5 and all(0 <= m[0] <= 32 and 0 <= m[3] <= 32 for m in view.matches)
    with torch.no_grad():
        a, b = net.forward_embedding(images[:1]), net.forward_embedding(images[1:2])
    assert view.similarity == pytest.approx(float(torch.nn.functional.cosine_similarity(a, b).item()), abs=1e-5)
    rgb = np.zeros((32, 32, 3), np.uint8)
    assert draw_pair(view, rgb, rgb, tmp_path / "pair.png").is_file()


def test_overlay_blends_into_uint8():
    out = overlay(np.full((4, 4, 3), 255, np.uint8), np.zeros((4, 4)))
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3)
