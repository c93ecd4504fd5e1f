"""GoogLeNet against a torch module written after torchvision's ``googlenet`` definition.

torchvision does not import here, so the reference below rebuilds its GoogLeNet
(BasicConv2d / Inception / InceptionAux, ceil-mode pools, transform_input) in plain
``torch.nn`` with its module names. Random O(1)-scale weights and BatchNorm statistics go
through a torch zip checkpoint and ``load_ported`` (the safe loader), then every named
block - stem, every Inception block and its four branches, pools, fc (through
``models.activations`` on images in [0, 1], so names and the ImageNet normalisation are
pinned too) and both auxiliary heads (called directly) - is compared to 1e-4, with a guard that the reference has std in [0.2, 5].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from repsim_jax.models import (activations, build, list_layers, load_ported,  # noqa: E402
                               port_torchvision)
from repsim_jax.models.googlenet import transform_input  # noqa: E402
from repsim_jax.models.port import PortError  # noqa: E402

pytestmark = pytest.mark.torch
TOL = 1e-4
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


class TBasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class TInception(nn.Module):
    def __init__(self, cin, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = TBasicConv2d(cin, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(TBasicConv2d(cin, ch3x3red, kernel_size=1),
                                     TBasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(TBasicConv2d(cin, ch5x5red, kernel_size=1),
                                     TBasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1,
                                                  ceil_mode=True),
                                     TBasicConv2d(cin, pool_proj, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x),
                          self.branch4(x)], 1)


class TInceptionAux(nn.Module):
    def __init__(self, cin, num_classes):
        super().__init__()
        self.conv = TBasicConv2d(cin, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=0.7)

    def forward(self, x):
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))
        x = F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)
        return self.fc2(self.dropout(x))


class TGoogLeNet(nn.Module):
    def __init__(self, num_classes=1000, transform_input=True):
        super().__init__()
        self.transform_input = transform_input
        self.conv1 = TBasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = TBasicConv2d(64, 64, kernel_size=1)
        self.conv3 = TBasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = TInception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = TInception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = TInception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = TInception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = TInception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = TInception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = TInception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = TInception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = TInception(832, 384, 192, 384, 48, 128, 128)
        self.aux1 = TInceptionAux(512, num_classes)
        self.aux2 = TInceptionAux(528, num_classes)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1024, num_classes)

    def _transform_input(self, x):
        if self.transform_input:
            x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
            x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
            x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
            x = torch.cat((x_ch0, x_ch1, x_ch2), 1)
        return x

    def forward(self, x):   # eval mode: the auxiliary heads do not run
        x = self._transform_input(x)
        for name in ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a",
                     "inception3b", "maxpool3", "inception4a", "inception4b", "inception4c",
                     "inception4d", "inception4e", "maxpool4", "inception5a", "inception5b",
                     "avgpool"):
            x = getattr(self, name)(x)
        return self.fc(self.dropout(torch.flatten(x, 1)))


def randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                fan_in = int(np.prod(mod.weight.shape[1:]))
                # 2/fan_in: ReLU halves the variance, so blocks stay O(1) through the depth
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g)
                                 * (2.0 / fan_in) ** 0.5)
                if mod.bias is not None:
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
            elif isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(1 + 0.1 * torch.randn(c, generator=g))
                mod.bias.copy_(0.1 * torch.randn(c, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model.eval()


NAMES = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a",
         "inception3a.branch1", "inception3a.branch2", "inception3a.branch3",
         "inception3a.branch4", "inception3b", "maxpool3", "inception4a", "inception4b",
         "inception4c", "inception4d", "inception4e", "maxpool4", "inception5a",
         "inception5b", "avgpool", "fc"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tm = randomise(TGoogLeNet(num_classes=10))
    path = tmp_path_factory.mktemp("googlenet") / "googlenet.pth"
    torch.save(tm.state_dict(), path)
    model = load_ported("googlenet", path, input_shape=(64, 64, 3))
    return tm, model


def _sub(model, name):
    m = model
    for part in name.split("."):
        m = m[int(part)] if part.isdigit() else getattr(m, part)
    return m


@nnx.jit
def _aux(model, a4a, a4d):
    return {"aux1": model.aux1(a4a), "aux2": model.aux2(a4d)}


def test_every_block_matches_torch(pair):
    tm, model = pair
    x01 = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    x = ((x01 - MEAN) / STD).astype(np.float32)   # what model.preprocess (ImageNet) gives
    assert model.preprocess.mean == tuple(MEAN) and model.transform_input
    ref = {}
    hooks = [_sub(tm, n).register_forward_hook(
        lambda mod, i, o, n=n: ref.__setitem__(n, o.detach().clone()))
        for n in NAMES]
    hooks += [getattr(tm, a).register_forward_hook(
        lambda mod, i, o, a=a: ref.__setitem__(a, o.detach().clone())) for a in ("aux1",)]
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        logits = tm(xt)
        ref["aux1"] = tm.aux1(ref["inception4a"].clone())
        ref["aux2"] = tm.aux2(ref["inception4d"].clone())
    for h in hooks:
        h.remove()
    names = list_layers(model)
    top = [n for n in NAMES if "." not in n]
    assert [n for n in names if n in top] == top              # torchvision's names, in order
    assert set(NAMES) <= set(names)
    assert not any(n.startswith("aux") for n in names)        # off at evaluation: never run
    ours = dict(activations(model, x01, NAMES + ["logits"]))  # ImageNet normalisation inside
    ours.update(_aux(model, jnp.asarray(ours["inception4a"]), jnp.asarray(ours["inception4d"])))
    for name in NAMES + ["aux1", "aux2"]:
        r = ref[name].numpy()
        if r.ndim == 4:
            r = r.transpose(0, 2, 3, 1)
        o = np.asarray(ours[name])
        assert o.shape == r.shape, (name, o.shape, r.shape)
        assert 0.2 < r.std() < 5, f"{name}: reference std {r.std():.3g} is not O(1)"
        err = float(np.abs(o - r).max())
        assert err < TOL, f"{name}: max |ours - torch| = {err:.2e}"
    np.testing.assert_allclose(np.asarray(ours["logits"]), logits.numpy(), atol=TOL)
    # the shapes torchvision gives at 64 px (ceil-mode pools)
    assert ours["maxpool1"].shape[1:3] == (16, 16) and ours["inception5b"].shape[1:] == (2, 2, 1024)


def test_transform_input_and_structure():
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
    t = TGoogLeNet(10, transform_input=True)._transform_input(
        torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_allclose(np.asarray(transform_input(x)), t.permute(0, 2, 3, 1).numpy(),
                               atol=1e-6)
    abstract = nnx.eval_shape(lambda: build("googlenet"))
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert n == sum(p.numel() for p in TGoogLeNet(1000).parameters())   # 13.0M with aux
    plain = nnx.eval_shape(lambda: build("googlenet", aux_logits=False))
    n_plain = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(plain, nnx.Param)))
    assert n_plain == 6_624_904                                          # torchvision's count
    # a state_dict with the aux heads does not fit the model without them: named keys
    sd = {k: v.numpy() for k, v in TGoogLeNet(10).state_dict().items()}
    with pytest.raises(PortError, match=r"unexpected keys.*aux1\.conv\.conv\.weight"):
        port_torchvision(nnx.eval_shape(lambda: build("googlenet", num_classes=10,
                                                      aux_logits=False)), sd)
