"""Tests for bigmodel_book.vision: unfold convolution, models' input checks, data loaders,
the offline torchvision path, the recipe and the CLI."""

import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bigmodel_book.train.learner import Learner, accuracy
from bigmodel_book.vision.conv import conv2d_unfold, conv_output_size, receptive_field
from bigmodel_book.vision.models import (
    LeNet5,
    ResNet,
    VisionConfig,
    image_datasets,
    mnist_dls,
    train_vision,
)


@pytest.mark.parametrize('seed', range(20))
def test_conv2d_unfold_matches_torch(seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))
    B, C, O, kh, kw, s, p, d = (
        r(1, 4),
        r(1, 4),
        r(1, 5),
        r(1, 5),
        r(1, 5),
        r(1, 4),
        r(0, 3),
        r(1, 3),
    )
    H, W = r(d * (kh - 1) + 1, 20), r(d * (kw - 1) + 1, 20)
    x, w, b = (
        torch.randn(B, C, H, W, generator=g),
        torch.randn(O, C, kh, kw, generator=g),
        torch.randn(O, generator=g),
    )
    ref = F.conv2d(x, w, b, (s, s + 1), (p, 0), d) if seed % 2 else F.conv2d(x, w, b, s, p, d)
    ours = (
        conv2d_unfold(x, w, b, (s, s + 1), (p, 0), d)
        if seed % 2
        else conv2d_unfold(x, w, b, s, p, d)
    )
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_sizes_and_receptive_field():
    assert conv_output_size(28, 5, padding=2) == 28 and conv_output_size(7, 3, 2, 1) == 4
    assert receptive_field([(3, 1)] * 3) == 7 and receptive_field([(2, 2), (2, 2)]) == 4
    with pytest.raises(ValueError, match='does not fit'):
        conv_output_size(3, 5)
    with pytest.raises(ValueError, match='channels'):
        conv2d_unfold(torch.randn(1, 2, 5, 5), torch.randn(1, 3, 3, 3))


@pytest.mark.parametrize('make', [LeNet5, lambda: ResNet(width=8)])
def test_models_shapes_and_bad_input(make):
    m = make()
    assert m(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match=r'\(B, 1, '):
        m(torch.rand(1, 28, 28))
    with pytest.raises(ValueError, match='channel'):
        m(torch.rand(2, 3, 28, 28))
    with pytest.raises(TypeError, match='floating-point'):
        m(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(TypeError, match='Tensor'):
        m(np.zeros((2, 1, 28, 28), np.float32))


def test_lenet_size_and_resnet_any_size():
    with pytest.raises(ValueError, match='28x28'):
        LeNet5()(torch.rand(2, 1, 32, 32))
    assert LeNet5(in_channels=3, size=32)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert ResNet(width=4, in_channels=3)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match='8x8'):
        ResNet(width=4)(torch.rand(2, 1, 4, 4))


def test_mnist_dls_split_and_augment():
    dls = mnist_dls(bs=64, seed=1, device='cpu', augment=1.0)
    assert (len(dls.train.dataset), len(dls.valid.dataset), len(dls.test.dataset)) == (
        3500,
        500,
        1000,
    )
    assert torch.bincount(dls.test.dataset.arrays[1]).tolist() == [100] * 10
    x, y = next(iter(dls.train))
    assert (
        x.shape == (64, 1, 28, 28)
        and x.dtype == torch.float32
        and x.min() >= 0
        and x.max() <= 1
        and y.dtype == torch.long
    )
    assert dls.train.dataset.transform is not None and dls.test.dataset.transform is None
    other = mnist_dls(seed=1, device='cpu')
    assert torch.equal(other.test.dataset.arrays[1], dls.test.dataset.arrays[1])


def test_predict_rejects_bad_images():
    from bigmodel_book.data.core import ArrayDataset, DataLoaders

    dls = DataLoaders.from_datasets(
        ArrayDataset(torch.rand(8, 1, 28, 28), torch.arange(8)), bs=4, device='cpu'
    )
    learn = Learner(LeNet5(), dls, torch.nn.CrossEntropyLoss(), metrics=[accuracy], quiet=True)
    assert learn.predict(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    with pytest.raises(TypeError, match='floating-point'):
        learn.predict(np.zeros((4, 1, 28, 28), np.uint8))
    with pytest.raises(ValueError, match='shape'):
        learn.predict(torch.rand(4, 28, 28))


def _write_idx(path, arr: np.ndarray):
    "Write `arr` (uint8) in the MNIST idx format (magic 0x08 = ubyte, the sizes, big-endian)."
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack('>BBBB', 0, 0, 0x08, arr.ndim) + struct.pack(f'>{arr.ndim}I', *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def _tiny_mnist(root, n_train=24, n_test=20):
    rng = np.random.default_rng(0)
    raw = root / 'MNIST' / 'raw'
    for split, n in (('train', n_train), ('t10k', n_test)):
        _write_idx(raw / f'{split}-images-idx3-ubyte', rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f'{split}-labels-idx1-ubyte', np.arange(n) % 10)
    return root


def test_full_scale_path_offline(tmp_path):
    root = _tiny_mnist(tmp_path / 'tv')
    tr, va, te = image_datasets('mnist', root=root, download=False)
    assert len(tr) + len(va) == 24 and len(te) == 20
    x, y = te[3]
    assert (
        x.shape == (1, 28, 28)
        and x.dtype == torch.float32
        and 0 <= x.min()
        and x.max() <= 1
        and int(y) == 3
    )
    dls = mnist_dls(bs=8, dataset='mnist', root=root, download=False, device='cpu')
    assert next(iter(dls.train))[0].shape == (8, 1, 28, 28)
    with pytest.raises(FileNotFoundError):
        image_datasets('fashion_mnist', root=root, download=False)
    with pytest.raises(ValueError, match='Unknown image data set'):
        image_datasets('imagenet', root=root, download=False)


def test_recipe_and_cli_train_and_save(tmp_path, capsys):
    from bigmodel_book.cli.commands import train_vision_main

    _, m = train_vision(
        VisionConfig(model='lenet', epochs=1, device='cpu', out=tmp_path / 'run', quiet=True)
    )
    assert m['task'] == 'vision' and 0 <= m['test_accuracy'] <= 1
    assert (tmp_path / 'run' / 'model.safetensors').exists()
    assert json.loads((tmp_path / 'run' / 'metrics.json').read_text())['model'] == 'lenet'
    root = _tiny_mnist(tmp_path / 'tv')
    m = train_vision_main(
        [
            '--model',
            'resnet',
            '--width',
            '4',
            '--epochs',
            '1',
            '--bs',
            '8',
            '--device',
            'cpu',
            '--dataset',
            'mnist',
            '--data-root',
            str(root),
            '--out',
            str(tmp_path / 'run2'),
            '--quiet',
        ]
    )
    assert m['dataset'] == 'mnist' and len(capsys.readouterr().out) > 0


def test_vision_config_defaults_are_the_cli_run():
    cfg = VisionConfig()
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.bs, cfg.width, cfg.augment) == (
        'resnet',
        12,
        5e-3,
        128,
        32,
        0.0,
    )


def test_cli_help_lists_options(capsys):
    from bigmodel_book.cli.commands import train_vision_main

    with pytest.raises(SystemExit):
        train_vision_main(['--help'])
    out = capsys.readouterr().out
    for opt in ('--model', '--epochs', '--device', '--augment', '--dataset', '--width', '--out'):
        assert opt in out


@pytest.mark.gpu
def test_resnet_amp_channels_last_cuda():
    m = ResNet(width=8).cuda().to(memory_format=torch.channels_last)
    x = torch.rand(4, 1, 28, 28, device='cuda').to(memory_format=torch.channels_last)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        out = m(x)
    assert out.shape == (4, 10) and torch.isfinite(out.float()).all()


# --- 2.3: Grad-CAM and the deletion test ---------------------------------------------------
from bigmodel_book.vision.inspect import deletion_curve, deletion_order, grad_cam  # noqa: E402


@pytest.mark.parametrize('seed', range(3))
def test_grad_cam_matches_captum(seed):
    captum_attr = pytest.importorskip('captum.attr')
    torch.manual_seed(seed)
    m, x = LeNet5().eval(), torch.rand(4, 1, 28, 28)
    layer, t = m.features[4], torch.tensor([0, 3, 5, 9])
    ref = captum_attr.LayerGradCam(m, layer).attribute(x, target=t, relu_attributions=True)
    torch.testing.assert_close(grad_cam(m, layer, x, t, upsample=False), ref[:, 0])
    up = captum_attr.LayerAttribution.interpolate(ref, (28, 28), 'bilinear')[:, 0]
    torch.testing.assert_close(grad_cam(m, layer, x, t), up)


def test_grad_cam_is_cam_for_gap_networks_and_keeps_the_mode():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(3, 4),
    ).train()
    x = torch.rand(2, 1, 5, 5)
    a = net[:2](x).detach()
    want = torch.einsum('k,bkij->bij', net[4].weight[1].detach(), a) / 25
    torch.testing.assert_close(grad_cam(net, net[1], x, 1, upsample=False, relu=False), want)
    assert net.training and (grad_cam(net, net[1], x, 1) >= 0).all()
    assert grad_cam(net, net[1], x).shape == (2, 5, 5)  # default: the predicted classes


def test_grad_cam_bad_input():
    m = LeNet5()
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        grad_cam(m, m.features[4], torch.rand(1, 28, 28))
    with pytest.raises(ValueError, match='target'):
        grad_cam(m, m.features[4], torch.rand(2, 1, 28, 28), 10)
    with pytest.raises(ValueError, match='target'):
        grad_cam(m, m.features[4], torch.rand(2, 1, 28, 28), [1, 2, 3])
    with pytest.raises(ValueError, match='run once'):
        grad_cam(m, torch.nn.Conv2d(1, 1, 1), torch.rand(2, 1, 28, 28))


def test_deletion_order_and_curve():
    order = deletion_order(torch.tensor([[[0.0, 3.0], [1.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]]))
    assert order[0].tolist() == [1, 3, 2, 0] and sorted(order[1].tolist()) == [0, 1, 2, 3]
    flat = torch.zeros(1, 8, 8)
    assert not torch.equal(deletion_order(flat, 0), deletion_order(flat, 1))  # seeded ties
    m, x, y = LeNet5().eval(), torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    p = deletion_curve(m, x, y, deletion_order(x[:, 0]), [0, 0.5, 1])
    with torch.no_grad():
        torch.testing.assert_close(p[0], m(x).softmax(-1)[torch.arange(3), y])
        torch.testing.assert_close(p[2], m(torch.zeros_like(x)).softmax(-1)[torch.arange(3), y])
    with pytest.raises(ValueError, match='fractions'):
        deletion_curve(m, x, y, deletion_order(x[:, 0]), [1.5])
    with pytest.raises(ValueError, match='order'):
        deletion_curve(m, x, y, deletion_order(x[:2, 0]), [0.1])
    with pytest.raises(ValueError, match='maps'):
        deletion_order(torch.rand(28, 28))
