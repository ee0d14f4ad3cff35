"""Data pipeline: converter, letterbox, rect batches, bad files, cache staleness, mosaic, video frames."""
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT
from utils.augmentations import letterbox
from utils.coco2yolo import main as coco2yolo_main
from utils.datasets import DatasetError, LoadImages, LoadImagesAndLabels, create_dataloader

COCO8 = ROOT / 'data' / 'coco8'
HYP = yaml.safe_load((ROOT / 'data' / 'hyp.scratch.yaml').read_text())


def _copy_coco8(tmp_path):
    shutil.copytree(COCO8 / 'images', tmp_path / 'images')
    shutil.copytree(COCO8 / 'labels', tmp_path / 'labels')
    return tmp_path / 'images'


def test_coco2yolo_values(tmp_path, capsys):
    s = coco2yolo_main([str(COCO8 / 'annotations' / 'instances.json'), str(tmp_path)])
    out = capsys.readouterr().out
    assert s == {'images': 8, 'boxes': 38, 'empty': 1, 'crowd_skipped': 1, 'other_skipped': 0}
    assert '1 crowd boxes skipped' in out
    gt = json.loads((COCO8 / 'annotations' / 'instances.json').read_text())
    im = next(i for i in gt['images'] if i['id'] == 9)
    anns = [a for a in gt['annotations'] if a['image_id'] == 9 and not a['iscrowd']]
    rows = (tmp_path / '000000000009.txt').read_text().splitlines()
    assert len(rows) == len(anns)
    a = anns[0]
    x, y, w, h = a['bbox']
    c, *v = rows[0].split()
    assert int(c) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
                      31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
                      56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
                      85, 86, 87, 88, 89, 90].index(a['category_id'])
    assert [float(t) for t in v] == pytest.approx([(x + w / 2) / im['width'], (y + h / 2) / im['height'],
                                                   w / im['width'], h / im['height']], abs=1e-6)
    assert all(len(t.split('.')[1]) == 6 for t in v)  # 6 decimals
    crowd = next(a for a in gt['annotations'] if a['iscrowd'])
    crowd_file = next(i['file_name'] for i in gt['images'] if i['id'] == crowd['image_id'])
    n_non_crowd = sum(1 for a in gt['annotations'] if a['image_id'] == crowd['image_id'] and not a['iscrowd'])
    assert len((tmp_path / (Path(crowd_file).stem + '.txt')).read_text().splitlines()) == n_non_crowd
    empty = [p for p in tmp_path.glob('*.txt') if not p.read_text()]
    assert len(empty) == 1


@pytest.mark.parametrize('shape,new,auto,expect_shape,expect_pad', [
    ((480, 640), 640, False, (640, 640), (0.0, 80.0)),
    ((480, 640), 640, True, (512, 640), (0.0, 16.0)),  # auto: remainder modulo 128
    ((100, 50), 256, False, (256, 256), (64.0, 0.0)),
    ((427, 640), 320, True, (320, 320), (0.0, 53.0)),  # 214 high, 106 < 128 of padding
    ((200, 640), 320, True, (192, 320), (0.0, 46.0)),  # 100 high + (220 mod 128 = 92) = 192
])
def test_letterbox_shapes_and_padding(shape, new, auto, expect_shape, expect_pad):
    img = np.full((*shape, 3), 200, np.uint8)
    out, ratio, pad = letterbox(img, new, auto=auto)
    assert out.shape[:2] == expect_shape and pad == pytest.approx(expect_pad)
    dw, dh = pad
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    if dh:
        assert (out[:top] == 114).all() and (out[top] == 200).all()
    if dw:
        assert (out[:, :left] == 114).all() and (out[:, left] == 200).all()


def test_letterbox_no_upscale():
    out, ratio, _ = letterbox(np.zeros((100, 200, 3), np.uint8), 640, auto=False, scaleup=False)
    assert ratio == (1.0, 1.0) and out.shape[:2] == (640, 640)


def test_rect_shapes_and_order(tmp_path):
    images = _copy_coco8(tmp_path)
    ds = LoadImagesAndLabels(str(images), img_size=320, batch_size=4, rect=True, stride=32, pad=0.5)
    ar = ds.shapes[:, 1] / ds.shapes[:, 0]
    assert (np.diff(ar) >= 0).all()  # sorted by aspect ratio
    # batch 0: four landscape images (h/w < 1): [maxi, 1] * 320 / 32 + 0.5, ceil, * 32
    expected0 = np.ceil(np.array([ar[:4].max(), 1]) * 320 / 32 + 0.5).astype(int) * 32
    assert (ds.batch_shapes[0] == expected0).all()
    img, labels, path, shapes = ds[0]
    assert tuple(img.shape[1:]) == tuple(ds.batch_shapes[0]) and img.dtype == torch.uint8
    assert labels.shape[1] == 6 and path == ds.img_files[0]
    (h0, w0), ((rh, rw), pad) = shapes
    assert max(h0, w0) == 640 and rh == pytest.approx(0.5, abs=0.01) and rw == 0.5
    for f, lf, lb in zip(ds.img_files, ds.label_files, ds.labels):  # reordered together
        assert Path(f).stem == Path(lf).stem
        rows = [line.split() for line in Path(lf).read_text().splitlines() if line.strip()]
        np.testing.assert_array_equal(lb, np.array(rows, np.float32).reshape(-1, 5))


def test_packed_per_image_data():
    """The flat containers a dataset keeps per image (utils/packed.py) behave as the lists they replace: items,
    negative indices, slices, reordering, paths that are not UTF-8; and their items cannot be written."""
    from utils.packed import PackedImages, PackedStrings, RaggedArrays
    arrays = [np.arange(10, dtype=np.float32).reshape(2, 5), np.zeros((0, 5), np.float32), np.ones((1, 5))]
    packed = RaggedArrays.pack(arrays, 5)
    assert len(packed) == 3 and packed[1].shape == (0, 5) and packed[-1].dtype == np.float32
    assert [a.tolist() for a in packed.take([2, 0, 1])] == [arrays[2].tolist(), arrays[0].tolist(), []]
    assert [a.tolist() for a in packed[1:]] == [[], arrays[2].tolist()]
    with pytest.raises(ValueError, match='read-only'):
        packed[0][0, 0] = 5
    with pytest.raises(IndexError):
        packed[3]
    paths = ['a/b.jpg', 'ü/ß.png', os.fsdecode(b'bad\xff.jpg')]
    strings = PackedStrings.pack(paths)
    assert list(strings) == paths and list(strings.take([1, 2, 0])) == [paths[1], paths[2], paths[0]]
    images = PackedImages([[2, 3], [1, 1]])
    assert images[0] is None and images.nbytes == 21
    images.store(1, np.full((1, 1, 3), 7, np.uint8))
    images.store(0, np.arange(18, dtype=np.uint8).reshape(2, 3, 3))
    assert images[0].tolist() == np.arange(18).reshape(2, 3, 3).tolist() and images[1].tolist() == [[[7, 7, 7]]]
    with pytest.raises(ValueError, match='expected'):
        images.store(0, np.zeros((3, 2, 3), np.uint8))


def test_ram_cache_refuses_an_image_of_another_size_than_scanned(tmp_path, monkeypatch):
    """The RAM cache is one buffer laid out by the scanned sizes: an image that decodes to another size is named
    in one line, before training starts."""
    import utils.datasets as datasets
    images = _copy_coco8(tmp_path)
    monkeypatch.setattr(datasets, 'resized_hw', lambda shapes, size: np.full((len(shapes), 2), size // 2))
    with pytest.raises(DatasetError, match=r'\.jpg is \d+x\d+ at --img 64 as OpenCV decodes it, but 32x32 by the '
                                           r'size the scan read .*or train without --cache-images ram'):
        LoadImagesAndLabels(str(images), img_size=64, cache_images='ram')


def test_items_and_collate(tmp_path):
    images = _copy_coco8(tmp_path)
    loader, ds = create_dataloader(str(images), 256, 4, 32, augment=True, hyp=HYP, workers=0, seed=1)
    imgs, targets, paths, shapes = next(iter(loader))
    assert imgs.shape == (4, 3, 256, 256) and shapes == (None,) * 4
    assert targets.shape[1] == 6 and set(targets[:, 0].tolist()) <= {0, 1, 2, 3}
    assert (targets[:, 2:] >= 0).all() and (targets[:, 2:] <= 1).all()


def test_same_seed_same_batches(tmp_path):
    images = _copy_coco8(tmp_path)
    batches = []
    for _ in range(2):
        import random
        random.seed(0)
        np.random.seed(0)
        loader, _ = create_dataloader(str(images), 128, 4, 32, augment=True, hyp=HYP, workers=2, seed=3,
                                      shuffle=True)
        batches.append(next(iter(loader)))
    assert batches[0][2] == batches[1][2]
    assert (batches[0][0] == batches[1][0]).all() and (batches[0][1] == batches[1][1]).all()


def _make_bad_dataset(root):
    images, labels = root / 'images', root / 'labels'
    images.mkdir()
    labels.mkdir()
    src = sorted((COCO8 / 'images').glob('*.jpg'))
    for p in src[:3]:  # good ones
        shutil.copy(p, images / p.name)
        shutil.copy(COCO8 / 'labels' / (p.stem + '.txt'), labels / (p.stem + '.txt'))
    shutil.copy(src[3], images / 'background.jpg')  # no label file: background
    shutil.copy(src[4], images / 'empty.jpg')
    (labels / 'empty.txt').write_text('')
    data = src[5].read_bytes()
    (images / 'truncated.jpg').write_bytes(data[:len(data) // 2])
    (images / 'text.jpg').write_text('this is not an image')
    for name, text in [('cols7', '0 0.5 0.5 0.2 0.2 1 1\n'), ('negative', '0 -0.5 0.5 0.2 0.2\n'),
                       ('garbage', 'dog cat fish mouse horse\n'), ('dups', '1 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n')]:
        shutil.copy(src[0], images / f'{name}.jpg')
        (labels / f'{name}.txt').write_text(text)
    cv2.imwrite(str(images / 'tiny.jpg'), np.zeros((8, 8, 3), np.uint8))
    return images


def test_bad_files_named_and_skipped(tmp_path, caplog):
    import logging
    caplog.set_level(logging.INFO)
    images = _make_bad_dataset(tmp_path)
    ds = LoadImagesAndLabels(str(images), img_size=128, batch_size=4)
    kept = {Path(f).stem for f in ds.img_files}
    good = {p.stem for p in sorted((COCO8 / 'images').glob('*.jpg'))[:3]}
    assert kept == good | {'background', 'empty', 'dups'}
    text = caplog.text
    for name, reason in [('truncated.jpg', 'truncated'), ('text.jpg', 'not an image'), ('cols7.jpg', '7 columns'),
                         ('negative.jpg', 'negative'), ('garbage.jpg', 'non-numeric'), ('tiny.jpg', 'under 10')]:
        lines = [ln for ln in text.splitlines() if name in ln]
        assert len(lines) == 1 and reason in lines[0], (name, lines)
    assert 'dups.txt: 1 duplicate label rows dropped' in text
    assert len(ds.labels[ds.img_files.index(str(images / 'dups.jpg'))]) == 1
    assert '3 labelled, 1 missing labels, 1 empty' not in text  # dups counts as labelled too
    assert '4 labelled, 1 missing labels, 1 empty, 6 corrupt, 1 duplicate rows dropped' in text
    for i in range(len(ds)):  # every kept item loads
        ds[i]


def test_stale_cache_rebuilt(tmp_path, caplog):
    import logging
    images = _copy_coco8(tmp_path)
    caplog.set_level(logging.INFO)
    LoadImagesAndLabels(str(images), img_size=128)
    assert (tmp_path / 'labels.cache').exists() and '(from scan)' in caplog.text
    caplog.clear()
    LoadImagesAndLabels(str(images), img_size=128)
    assert '(from cache' in caplog.text
    lbl = tmp_path / 'labels' / '000000000009.txt'
    lbl.write_text('3 0.5 0.5 0.1 0.1\n')
    caplog.clear()
    ds = LoadImagesAndLabels(str(images), img_size=128)
    assert '(from scan)' in caplog.text
    assert ds.labels[ds.img_files.index(str(images / '000000000009.jpg'))].tolist() == \
        [pytest.approx([3, 0.5, 0.5, 0.1, 0.1])]
    (tmp_path / 'labels.cache').write_bytes(b'garbage or a cache from another program')
    caplog.clear()
    LoadImagesAndLabels(str(images), img_size=128)
    assert '(from scan)' in caplog.text


def test_read_only_dataset_warns(tmp_path, caplog, monkeypatch):
    images = _copy_coco8(tmp_path)
    import utils.label_cache as lc

    def deny(*a, **k):
        raise PermissionError('read-only file system')
    monkeypatch.setattr(lc.os, 'replace', deny)
    ds = LoadImagesAndLabels(str(images), img_size=128)
    assert len(ds) == 8 and 'label cache not written' in caplog.text


def test_mosaic_label_encloses_object(tmp_path):
    """Each source image holds one solid box of its own colour and class. After mosaic + random perspective
    every kept label lies inside the image and encloses all pixels of its object's colour."""
    colours = {0: (0, 0, 255), 1: (0, 255, 0), 2: (255, 0, 0), 3: (0, 255, 255)}  # BGR: red, green, blue, yellow
    (tmp_path / 'images').mkdir()
    (tmp_path / 'labels').mkdir()
    for c, bgr in colours.items():
        img = np.full((240, 320, 3), 90, np.uint8)
        x1, y1, x2, y2 = 60 + 20 * c, 40 + 10 * c, 260 - 10 * c, 200
        img[y1:y2, x1:x2] = bgr
        cv2.imwrite(str(tmp_path / 'images' / f'{c}.png'), img)
        (tmp_path / 'labels' / f'{c}.txt').write_text(
            f'{c} {(x1 + x2) / 2 / 320} {(y1 + y2) / 2 / 240} {(x2 - x1) / 320} {(y2 - y1) / 240}\n')
    hyp = dict(HYP, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0.5, flipud=0.2, degrees=10, shear=3)
    ds = LoadImagesAndLabels(str(tmp_path / 'images'), img_size=256, augment=True, hyp=hyp)
    assert ds.mosaic
    import random
    random.seed(0)
    np.random.seed(0)
    checked = 0
    for k in range(24):
        img, labels, _, _ = ds[k % 4]
        rgb = img.permute(1, 2, 0).numpy().astype(int)
        h, w = rgb.shape[:2]
        assert ((labels[:, 2:] >= 0) & (labels[:, 2:] <= 1)).all()
        for c in set(int(x) for x in labels[:, 1].tolist()):
            r, g, b = colours[c][::-1]
            mask = (np.abs(rgb - np.array([r, g, b])) < 40).all(-1)
            n, comp = cv2.connectedComponents(mask.astype(np.uint8))
            for _, _, x, y, bw, bh in labels[labels[:, 1] == c].tolist():
                box = np.zeros_like(mask)
                box[max(int((y - bh / 2) * h) - 2, 0):int((y + bh / 2) * h) + 3,
                    max(int((x - bw / 2) * w) - 2, 0):int((x + bw / 2) * w) + 3] = True
                inside = set(np.unique(comp[box & mask]).tolist()) - {0}
                assert inside, (k, c)  # the label covers its object...
                for i in inside:  # ...and encloses every object pixel it touches
                    assert not ((comp == i) & ~box).any(), (k, c)
                checked += 1
    assert checked >= 20


def test_video_read_frame_by_frame(tmp_path):
    path = tmp_path / 'clip.mp4'
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 10, (96, 64))
    for i in range(7):
        vw.write(np.full((64, 96, 3), i * 30, np.uint8))
    vw.release()
    cv2.imwrite(str(tmp_path / 'a.jpg'), np.zeros((64, 64, 3), np.uint8))
    frames = list(LoadImages(str(tmp_path), img_size=128))
    assert [Path(p).name for p, *_ in frames] == ['a.jpg'] + ['clip.mp4'] * 7
    path_, img, img0, cap = frames[-1]
    assert img0.shape == (64, 96, 3) and img.shape == (3, 128, 128) and cap is not None


def test_missing_sources_named(tmp_path):
    with pytest.raises(DatasetError, match='nowhere'):
        LoadImagesAndLabels(str(tmp_path / 'nowhere'))
    with pytest.raises(FileNotFoundError, match='nothing.jpg'):
        LoadImages(str(tmp_path / 'nothing.jpg'))


def test_txt_list_relative_paths(tmp_path):
    images = _copy_coco8(tmp_path)
    names = sorted(p.name for p in images.glob('*.jpg'))[:3]
    (tmp_path / 'list.txt').write_text(''.join(f'./images/{n}\n' for n in names))
    ds = LoadImagesAndLabels(str(tmp_path / 'list.txt'), img_size=128)
    assert [Path(f).name for f in ds.img_files] == names


@pytest.mark.parametrize('mode', ['ram', 'disk'])
def test_cached_images_equal_uncached(tmp_path, mode):
    images = _copy_coco8(tmp_path)
    plain = LoadImagesAndLabels(str(images), img_size=160, rect=True, batch_size=4)
    cached = LoadImagesAndLabels(str(images), img_size=160, rect=True, batch_size=4, cache_images=mode)
    if mode == 'disk':
        assert len(list(images.glob('*.160a.npy'))) == 8
        other = LoadImagesAndLabels(str(images), img_size=96, rect=True, batch_size=4, cache_images=mode)
        assert len(list(images.glob('*.96a.npy'))) == 8 and max(other.load_image(0)[0].shape) == 96
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[3] == b[3]


def test_stream_that_ends_stops_cleanly(tmp_path, caplog):
    from utils.sources import LoadStreams
    path = tmp_path / 'cam.mp4'
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 30, (64, 48))
    for i in range(6):
        vw.write(np.full((48, 64, 3), 20 * i, np.uint8))
    vw.release()
    import time
    streams = LoadStreams(str(path), img_size=64, retries=1, retry_wait=0.01)
    path.unlink()  # the open capture reads on; reconnecting fails, as for a camera that went away
    deadline = time.time() + 60
    for _, img, img0, _ in streams:
        assert img.shape[0] == 1 and img.shape[1] == 3 and img0[0].shape == (48, 64, 3)
        assert time.time() < deadline
        time.sleep(0.001)
    assert not any(streams.alive)
    assert 'reconnecting (attempt 1/1)' in caplog.text and 'it ends here' in caplog.text


@pytest.mark.parametrize('where, error, printed', [
    ('multiprocessing/resource_sharer.py', EOFError, False),
    ('multiprocessing/resource_sharer.py', ConnectionResetError, False),
    ('multiprocessing/resource_sharer.py', ValueError, True),
    ('utils/datasets.py', EOFError, True)])
def test_loader_worker_hides_only_hand_offs_the_training_process_broke_off(capsys, where, error, printed):
    """A worker's resource-sharer thread printed a traceback when the training process ended the loader mid
    hand-off (after another worker died, which it reports in one line); other errors still print."""
    from utils.datasets import quiet_broken_handoff
    source = ('import sys\ndef _serve(hook):\n    try:\n        raise {}("broken")\n    except Exception:\n'
              '        hook(*sys.exc_info())\n').format(error.__name__)  # as the sharer's server thread does
    scope = {}
    exec(compile(source, f'/usr/lib/python3/{where}', 'exec'), scope)
    scope['_serve'](quiet_broken_handoff)
    err = capsys.readouterr().err
    assert ('Traceback' in err and 'broken' in err) == printed
