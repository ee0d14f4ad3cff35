"""Darknet .cfg/.weights (models/darknet.py): outputs against darknet itself (AlexeyAB darknet's outputs on the same
files, stored in tests/data/darknet/ by tests/darknet_fixtures.py), exact .weights round trips and header versions,
one-line errors for bad files, and test.py/detect.py with --weights X.weights."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from darknet_fixtures import (DARKNET_EPS, DATA, READ_CASES, WRITE_CASES, differences, predictions, random_weights,
                              read_case_cfg, read_case_model, tolerance, write_case_model)
from models.darknet import DarknetError, DarknetModel, load_darknet_weights, save_darknet_weights, weights_file_size
from models.darknet_convert import load_darknet_model, write_darknet, yaml_to_darknet
from models.yolo import Model
from utils.torch_utils import count_flops
from test_robustness import assert_one_line_error


@pytest.mark.parametrize('name', READ_CASES)
def test_darknet_files_are_read_as_darknet_runs_them(name):
    """darknet's own cfgs with seeded weights (batch norms calibrated on two COCO images): our outputs are darknet's
    (AlexeyAB darknet run on the same files and input, tests/darknet_fixtures.py) within 10 x darknet's own
    fused-vs-unfused difference (measured on an AVX-512 CPU: within 0.13 of that tolerance on every case)."""
    judged = np.load(DATA / f'read-{name}.npz')
    assert_darknet_agrees(predictions(read_case_model(name)), judged)


@pytest.mark.parametrize('name', ['yolov4-tiny', 'yolov4-p5'])
def test_opencvs_batch_norm_eps_is_caught(name):
    """The comparison has the power to see the epsilon OpenCV's reader uses (1e-6, not darknet's 1e-5): every read
    case is then 1.9 to 3.2 x the tolerance out."""
    model = read_case_model(name)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-6
    with pytest.raises(AssertionError, match='xy px, wh rel, obj, cls'):
        assert_darknet_agrees(predictions(model), np.load(DATA / f'read-{name}.npz'))


@pytest.mark.parametrize('name', list(WRITE_CASES))
def test_written_darknet_files_run_in_darknet_as_our_model(name):
    """Our YAML models written as .cfg/.weights (models/darknet_convert.py) and run by darknet: darknet's outputs are
    the YAML model's own. And the tensors the writer puts in the files, normalised as darknet does (eps 1e-5, not
    the project's BN_EPS), give darknet's outputs: with a writer that moved the variances to 1e-6 they did not."""
    judged, img = np.load(DATA / f'write-{name}.npz'), WRITE_CASES[name]
    model = write_case_model(name)
    assert_darknet_agrees(predictions(model, img), judged)
    _, written, _ = yaml_to_darknet(model, img_size=img)  # the DarknetModel whose tensors write_darknet saves
    for m in written.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = DARKNET_EPS
    assert_darknet_agrees(predictions(written, img), judged)


def assert_darknet_agrees(ours, judged):
    assert ours.shape == judged['pred'].shape
    assert judged['pred'][..., 4].std() > 0.02  # the outputs depend on the input
    got, allowed = differences(ours, judged['pred']), tolerance(judged['noise'])
    assert (got <= allowed).all(), f'xy px, wh rel, obj, cls: {got} > {allowed}'


def test_written_variance_is_moved_to_darknets_eps(tmp_path):
    """A YAML batch norm (eps 1e-3) written for darknet, which normalises with sqrt(variance + .00001f)
    (src/blas.c normalize_cpu): the file's rolling variance is ours + 1e-3 - 1e-5, read back exactly."""
    model = random_weights(Model('yolov4-p5-tiny.yaml'))
    _, weights = write_darknet(model, tmp_path / 'm.cfg', tmp_path / 'm.weights', img_size=128)
    bn = model.model[0].bn
    n = bn.num_features
    floats = np.frombuffer(weights.read_bytes()[20:20 + 16 * n], dtype='<f4').reshape(4, n)  # biases scales mean var
    expected = (bn.running_var + (bn.eps - DARKNET_EPS)).numpy()
    np.testing.assert_array_equal(floats[3], expected)
    back = load_darknet_model(weights, cfg=tmp_path / 'm.cfg')
    assert back.model[0].bn.eps == 1e-5


def test_weights_round_trip_is_bit_exact(tmp_path):
    model = random_weights(DarknetModel('yolov4-tiny.cfg'), seed=3)
    save_darknet_weights(model, tmp_path / 'a.weights', seen=123456789012)
    other = DarknetModel('yolov4-tiny.cfg')
    assert load_darknet_weights(other, tmp_path / 'a.weights') == 123456789012
    sa, sb = model.state_dict(), other.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if 'num_batches_tracked' not in k)
    save_darknet_weights(other, tmp_path / 'b.weights', seen=123456789012)
    assert (tmp_path / 'a.weights').read_bytes() == (tmp_path / 'b.weights').read_bytes()
    with pytest.raises(DarknetError, match='a fused model'):
        save_darknet_weights(other.fuse(), tmp_path / 'c.weights')
    n = sum(p.numel() for p in model.parameters()) + sum(b.numel() for k, b in model.state_dict().items()
                                                         if 'running' in k)
    assert (tmp_path / 'a.weights').stat().st_size == 20 + 4 * n  # header with a 64-bit counter, then floats


def test_layer_sizes_give_the_released_files_sizes():
    """darknet's releases: yolov4-tiny.weights is 24,251,276 bytes and yolov4.weights 257,717,640 (23.13 and
    245.78 MiB in every download log): the float count of every layer, in order, adds up to them."""
    assert weights_file_size(DarknetModel('yolov4-tiny.cfg')) == 24_251_276
    assert weights_file_size(DarknetModel(read_case_cfg('yolov4'))) == 257_717_640


@pytest.mark.parametrize('version, header_bytes', [((0, 1, 0), 16), ((0, 2, 0), 20), ((0, 2, 5), 20),
                                                   ((1, 0, 0), 20), ((1000, 0, 0), 20)])
def test_header_versions(tmp_path, version, header_bytes):
    """AlexeyAB darknet reads the images-seen counter as 64 bits from version 0.2 on (src/parser.c
    load_weights_upto: major * 10 + minor >= 2; pjreddie's also asked for major and minor below 1000)."""
    model = random_weights(DarknetModel('yolov4-tiny.cfg'))
    path = save_darknet_weights(model, tmp_path / 'w.weights', seen=4242, version=version)
    floats = sum(t.numel() for k, t in model.state_dict().items() if t.is_floating_point() and 'anchor' not in k)
    assert path.stat().st_size == header_bytes + 4 * floats
    assert load_darknet_weights(DarknetModel('yolov4-tiny.cfg'), path) == 4242


TOO_FEW = r'w\.weights: \d+ floats after the header, but .*yolov4-tiny\.cfg needs \d+ \(truncated'


@pytest.mark.parametrize('change, needle', [
    (-4, TOO_FEW), (-4000000, TOO_FEW), (8, r'needs \d+ \(too long'),
    (-3, r'w\.weights: \d+ bytes after the header are not whole float32 values'),
    (-24000000, TOO_FEW)])
def test_truncated_or_oversized_weights_are_named(tmp_path, change, needle):
    path = save_darknet_weights(random_weights(DarknetModel('yolov4-tiny.cfg')), tmp_path / 'w.weights')
    data = path.read_bytes()
    path.write_bytes(data[:change] if change < 0 else data + bytes(change))
    with pytest.raises(DarknetError, match=needle):
        load_darknet_weights(DarknetModel('yolov4-tiny.cfg'), path)
    path.write_bytes(data[:10])
    with pytest.raises(DarknetError, match='10 bytes is too short for a darknet .weights header'):
        load_darknet_weights(DarknetModel('yolov4-tiny.cfg'), path)


@pytest.mark.parametrize('edit, needle', [
    ('[convolutional]\nfilters=8\n', None),
    ('[local]\nsize=3\n', r'm\.cfg:\d+: section \[local\] is not supported'),
    ('[convolutional]\nfilters=8\nactivation=hardtanh\n', r'm\.cfg:\d+ \[convolutional\]: activation=hardtanh'),
    ('[convolutional]\nfilters=eight\n', r'filters=eight is not a int'),
    ('[route]\nlayers=-99\n', r'layers=-99 points outside'),
    ('[shortcut]\nfrom=-3\n', r'from=-3 must name an earlier layer with the same channels'),
    ('filters 8\n', r"expected \[section\] or key=value, got 'filters 8'"),
])
def test_cfg_errors_name_the_line(tmp_path, edit, needle):
    text = (ROOT / 'models' / 'yolov4-tiny.cfg').read_text()
    first_conv = text.index('[convolutional]')
    (tmp_path / 'm.cfg').write_text(text[:first_conv] + edit + text[first_conv:])
    if needle is None:  # a well-formed extra layer: the model builds with it, and the layer after reads its 8 maps
        model = DarknetModel(tmp_path / 'm.cfg')
        assert len(model.model) == len(DarknetModel('yolov4-tiny.cfg').model) + 1
        assert model.model[0].conv.out_channels == 8 and model.model[1].conv.in_channels == 8
        return
    with pytest.raises(DarknetError, match=needle):
        DarknetModel(tmp_path / 'm.cfg')


def test_missing_cfg_for_weights_says_what_to_give(tmp_path):
    path = save_darknet_weights(random_weights(DarknetModel('yolov4-tiny.cfg')), tmp_path / 'mine.weights')
    with pytest.raises(DarknetError, match=r'no models/mine\.cfg to build it from: give its darknet cfg'):
        load_darknet_model(path)
    model = load_darknet_model(path, cfg='yolov4-tiny.cfg')
    assert model.names[0] == 'person' and len(model.names) == 80 and not model.training


@pytest.fixture(scope='module')
def tiny_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp('dk') / 'yolov4-tiny.weights'
    model = random_weights(DarknetModel('yolov4-tiny.cfg'))
    with torch.no_grad():  # objectness biases high, so that detections pass a usual threshold; boxes near the
        for i in model.yolo:  # anchors (exp(t) of random logits reaches thousands of pixels)
            conv = model.model[i - 1].conv
            conv.weight.mul_(0.1)
            conv.bias.view(3, -1)[:, 4] += 4
    return save_darknet_weights(model, path)


def test_test_and_detect_take_darknet_weights(tmp_path, tiny_weights):
    r = subprocess.run([sys.executable, 'test.py', '--weights', str(tiny_weights), '--data', 'data/coco8.yaml',
                        '--img', '128', '--device', 'cpu', '--workers', '0', '--project', str(tmp_path), '--name', 't'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert 'all ' in r.stderr  # the summary row
    import detect
    save_dir, dets = detect.detect(str(tiny_weights), str(ROOT / 'data' / 'coco8' / 'images'), img_size=128,
                                   conf_thres=0.3, device='cpu', project=str(tmp_path), name='d')
    assert len(dets) == 8 and sum(len(d) for d in dets.values()) > 0 and len(list(save_dir.glob('*.jpg'))) == 8
    r = subprocess.run([sys.executable, 'detect.py', '--weights', str(tmp_path / 'x.weights'), '--device', 'cpu',
                        '--project', str(tmp_path / 'none')], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert_one_line_error(r, 'detect.py', 'x.weights not found', 'downloaded into weights/ when named')


def test_hub_custom_takes_darknet_weights(tiny_weights):
    hub = torch.hub.load(str(ROOT), 'custom', source='local', path=str(tiny_weights), device='cpu', img_size=128)
    det = hub(str(ROOT / 'data' / 'coco8' / 'images' / '000000000009.jpg'))
    assert hub.names[0] == 'person' and det.shape[1] == 6 and len(det) > 0


def test_export_takes_darknet_weights(tiny_weights):
    from models.export import export
    files, diffs = export(str(tiny_weights), img_size=(128, 128))
    assert files['torchscript'].is_file() and files['onnx'].is_file()
    assert all(d < 1e-3 for d in diffs.values())


def test_fine_tune_from_darknet_weights_and_back_to_darknet_bit_exact(tmp_path, tiny_weights):
    """train.py --weights X.weights fine-tunes (one class here: the class convs are new); the run's .pt is written
    as darknet files by models/export.py --include darknet, and those read back are the .pt, bit for bit."""
    r = subprocess.run([sys.executable, 'train.py', '--weights', str(tiny_weights), '--data', 'data/coco8.yaml',
                        '--single-cls', '--epochs', '1', '--batch-size', '4', '--img', '128', '128', '--device', 'cpu',
                        '--workers', '0', '--noautoanchor', '--notest', '--project', str(tmp_path), '--name', 'ft'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert 'Transferred 116/120 items' in r.stderr  # all but the weights and biases of the convs before [yolo]
    best = tmp_path / 'ft' / 'weights' / 'final.pt'
    r = subprocess.run([sys.executable, 'models/export.py', '--weights', str(best), '--include', 'darknet',
                        '--img', '128'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and 'largest output difference 0 px' in r.stderr, r.stderr[-2000:]
    from models.checkpoint import load_checkpoint, model_from_checkpoint
    pt = model_from_checkpoint(load_checkpoint(best), best)
    back = load_darknet_model(best.with_suffix('.weights'), cfg=best.with_suffix('.cfg'))
    assert pt.nc == back.nc == 1 and 'classes=1' in best.with_suffix('.cfg').read_text()
    sa, sb = pt.state_dict(), back.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa if 'num_batches' not in k)


def test_yaml_checkpoint_exported_as_darknet_files(tmp_path):
    from models.checkpoint import checkpoint_header, model_payload, save_checkpoint
    from models.export import export_darknet
    model = random_weights(Model('yolov4-p5-tiny.yaml'))
    save_checkpoint(dict(checkpoint_header(-1, None), model=model_payload(model), ema=None), tmp_path / 'm.pt')
    (cfg, weights), diff = export_darknet(tmp_path / 'm.pt', img_size=100)
    # float32 rounding of the variance moved to darknet's eps, on boxes of hundreds of pixels (a wrong eps: > 1 px)
    assert diff < 0.02 and '[net]\n' in cfg.read_text() and 'width=128' in cfg.read_text()
    assert weights.stat().st_size == weights_file_size(DarknetModel(cfg))
    with pytest.raises(DarknetError, match='fused model'):
        write_darknet(Model('yolov4-p5-tiny.yaml').fuse(), tmp_path / 'f.cfg', tmp_path / 'f.weights')


def test_tiny_yaml_is_darknet_tiny_bit_for_bit(tmp_path):
    """models/yolov4-tiny.yaml loads darknet's tiny .weights (--cfg yolov4-tiny.yaml) with the same outputs, bit for
    bit, as the darknet cfg; written back as darknet files, the .weights are the same bytes."""
    dk = random_weights(DarknetModel('yolov4-tiny.cfg'), seed=2).eval()
    save_darknet_weights(dk, tmp_path / 'yolov4-tiny.weights')
    model = load_darknet_model(tmp_path / 'yolov4-tiny.weights', cfg='yolov4-tiny.yaml')
    assert isinstance(model, Model) and model.names[0] == 'person' and not model.training
    x = torch.rand(2, 3, 224, 160)
    with torch.no_grad():
        assert torch.equal(dk(x)[0], model(x)[0])
    write_darknet(model, tmp_path / 'back.cfg', tmp_path / 'back.weights', img_size=416)
    assert (tmp_path / 'back.weights').read_bytes() == (tmp_path / 'yolov4-tiny.weights').read_bytes()
    assert sum(p.numel() for p in model.parameters()) == 6_056_606  # the paper's 6.1M
    assert abs(count_flops(model, 416) - 6.9) < 0.05 and model.stride.tolist() == [32, 16]  # the paper's 6.9
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_darknet_weights_of_another_layout_are_one_line(tmp_path, tiny_weights):
    r = subprocess.run([sys.executable, 'train.py', '--weights', str(tiny_weights), '--cfg', 'yolov4-p5-tiny.yaml',
                        '--data', 'data/coco8.yaml', '--device', 'cpu', '--project', str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert_one_line_error(r, 'train.py', 'yolov4-tiny.weights: 6062814 floats after the header, but '
                                         'yolov4-p5-tiny.yaml (as darknet layers) needs')
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize('cfg', ['yolov4-tiny.cfg', 'yolov4-p5.cfg'])
def test_training_decodes_boxes_as_inference_does(cfg):
    """The loss's boxes (DarknetHead.train_box: exp for tiny, Scaled-YOLOv4's for P5) are inference's, per cell."""
    model = random_weights(DarknetModel(cfg), seed=4).eval()
    head = model.model[-1]
    torch.manual_seed(0)
    with torch.no_grad():
        z, raw = model(torch.rand(1, 3, 128, 128))
    offset = 0
    for i, r in enumerate(raw):
        _, na, ny, nx, no = r.shape
        decoded = z[0, offset:offset + na * ny * nx].view(na, ny, nx, no)
        offset += na * ny * nx
        a, gj, gi = torch.meshgrid(torch.arange(na), torch.arange(ny), torch.arange(nx), indexing='ij')
        a, gj, gi = a.flatten(), gj.flatten(), gi.flatten()
        box = head.train_box(i, r[0, a, gj, gi], head.anchors[i][a])
        box[:, 0] += gi
        box[:, 1] += gj
        torch.testing.assert_close(box * head.stride[i], decoded[a, gj, gi, :4], rtol=1e-5, atol=1e-3)
    assert head.cell_reach(0) == pytest.approx(0.025 if 'tiny' in cfg else 0.5)


def test_autoanchor_on_a_head_listing_stride_32_first():
    """Darknet's tiny lists its stride-32 level first: evolved anchors go to the levels by area and the grid-unit
    anchors are the pixel anchors over each level's own stride (they were divided before the levels were
    reordered, so each level trained with anchors 2x off)."""
    from utils.train.autoanchor import check_anchors
    model = DarknetModel('yolov4-tiny.cfg')
    head = model.model[-1]
    rng = np.random.default_rng(0)
    labels = [np.concatenate([np.zeros((20, 1)), rng.uniform(0.3, 0.7, (20, 2)), rng.uniform(0.01, 0.3, (20, 2))], 1)
              for _ in range(8)]
    dataset = type('Labels', (), {'shapes': np.full((8, 2), 640.), 'labels': labels})()
    before = head.anchor_grid.clone()
    check_anchors(dataset, model, thr=4.0, imgsz=640)
    assert not torch.equal(before, head.anchor_grid)  # evolved
    pixels = head.anchor_grid.view(head.nl, -1, 2)
    assert pixels[0].prod(-1).min() > pixels[1].prod(-1).max()  # stride 32 holds the large ones
    torch.testing.assert_close(head.anchors * head.stride.view(-1, 1, 1), pixels)


def test_nc_override_rewrites_classes_and_filters():
    model = DarknetModel('yolov4-tiny.cfg', nc=3)
    assert model.nc == model.model[-1].nc == 3 and model.model[model.yolo[0] - 1].conv.out_channels == 24
    text = model.to_cfg()
    assert text.count('classes=3') == 2 and text.count('filters=24') == 2
    again = DarknetModel(text=text)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_darknet_release_is_downloaded_by_name_and_checked(tmp_path, server, monkeypatch):
    from utils.downloads import DARKNET_RELEASES, DownloadError
    assert DARKNET_RELEASES['yolov4-p5.weights'] == \
        'https://github.com/AlexeyAB/darknet/releases/download/darknet_yolo_v4_pre/yolov4-p5.weights'
    url, served = server
    monkeypatch.setenv('YOLO_WEIGHTS_MIRROR', url)
    model = random_weights(DarknetModel('yolov4-tiny.cfg'), seed=5)
    save_darknet_weights(model, served / 'yolov4-tiny.weights')
    dst = tmp_path / 'weights' / 'yolov4-tiny.weights'
    loaded = load_darknet_model(dst)
    assert dst.read_bytes() == (served / 'yolov4-tiny.weights').read_bytes() and not list(dst.parent.glob('*.part'))
    assert torch.equal(loaded.model[0].conv.weight, model.model[0].conv.weight)
    data = (served / 'yolov4-tiny.weights').read_bytes()
    (served / 'yolov4-tiny.weights').write_bytes(data[:-400])  # a file that is not the release
    other = tmp_path / ('deep' * 40) / 'other' / 'yolov4-tiny.weights'  # a long path once cut the cause short
    with pytest.raises(DownloadError, match=r'yolov4-tiny\.weights: the downloaded file is not a usable checkpoint '
                                            r'\(.*truncated.*fetch it by hand from https://github\.com/AlexeyAB'):
        load_darknet_model(other)
    assert not other.exists() and not list(other.parent.glob('*.part'))


def test_hub_yolov4_tiny_pretrained_is_darknets_release_in_the_yaml(tmp_path, server, monkeypatch):
    url, served = server
    monkeypatch.setenv('YOLO_WEIGHTS_MIRROR', url)
    monkeypatch.setattr('utils.downloads.WEIGHTS_DIR', tmp_path / 'weights')
    dk = random_weights(DarknetModel('yolov4-tiny.cfg'), seed=6).eval()
    save_darknet_weights(dk, served / 'yolov4-tiny.weights')
    hub = torch.hub.load(str(ROOT), 'yolov4_tiny', source='local', device='cpu')
    assert (tmp_path / 'weights' / 'yolov4-tiny.weights').is_file()
    assert isinstance(hub.model, Model) and hub.model.names[0] == 'person' and hub.img_size == 416
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(hub.model(x)[0], dk(x)[0], rtol=1e-4, atol=1e-3)  # fused: float rounding
    three = torch.hub.load(str(ROOT), 'yolov4_tiny', source='local', device='cpu', classes=3)
    assert three.model.nc == 3 and len(three.names) == 3


TWO_LAYER_ROUTE = '''[net]
width=64
height=64
[convolutional]
filters=8
size=1
activation=linear
[convolutional]
filters=4
size=1
activation=linear
[route]
layers=-1,-2
groups=2
group_id=1
[convolutional]
filters={filters}
size=1
activation=linear
[yolo]
mask=0,1,2
anchors=10,13, 16,30, 33,23
{classes}'''


def test_grouped_route_of_two_layers_takes_each_layers_group():
    """darknet's forward_route_layer (src/route_layer.c) copies group `group_id` of each input layer in turn; it
    does not split their concatenation (which gave channels 6-11 of [4 + 8] here instead of 2-3 and 4-7)."""
    model = DarknetModel(text=TWO_LAYER_ROUTE.format(filters=18, classes='classes=1')).eval()
    outputs, x = [], torch.rand(1, 3, 64, 64)
    for m in model.model[:3]:
        x = m(x, outputs)
        outputs.append(x)
    torch.testing.assert_close(outputs[2], torch.cat([outputs[1][:, 2:4], outputs[0][:, 4:8]], 1), rtol=0, atol=0)
    assert model.model[3].conv.in_channels == 6


def test_yolo_classes_default_is_darknets():
    """A [yolo] without classes= has 20 (parse_yolo in src/parser.c), not 80."""
    model = DarknetModel(text=TWO_LAYER_ROUTE.format(filters=75, classes=''))
    assert model.nc == 20
    with pytest.raises(DarknetError, match=r'not \(classes \+ 5\) \* 3 = 75'):
        DarknetModel(text=TWO_LAYER_ROUTE.format(filters=255, classes=''))
    with pytest.raises(DarknetError, match='only an \\[upsample\\] with scale=1'):
        DarknetModel(text=TWO_LAYER_ROUTE.format(filters=75, classes='').replace('[route]',
                                                                                '[upsample]\nscale=2\n[route]'))
