"""Labels straight from COCO instances JSON and Pascal VOC XML (utils/label_formats, docs/labels.md).

The known answer: ground truth read through the pipeline (labels normalised to 0-1, as training sees them) and
written back by test.py's writer as detections of score 1 scores AP 1.000 at every IoU threshold in pycocotools
against the same JSON (or the VOC XML's ground truth).
"""
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT
from utils.data_config import load_data_config
from utils.datasets import LoadImagesAndLabels
from utils.errors import run_cli
from utils.sampling import SampleKey

COCO8 = ROOT / 'data' / 'coco8'
COCO128 = ROOT.parent / 'shared' / 'datasets' / 'coco128'  # a local copy, when the machine has one
VOC8 = ROOT / 'tests' / 'data' / 'voc8'
HYP = yaml.safe_load((ROOT / 'data' / 'hyp.scratch.yaml').read_text())


def _coco8_copy(tmp_path):
    """data/coco8's images and JSON in tmp_path (the label cache is written next to the JSON)."""
    shutil.copytree(COCO8 / 'images', tmp_path / 'images')
    (tmp_path / 'annotations').mkdir()
    shutil.copy(COCO8 / 'annotations' / 'instances.json', tmp_path / 'annotations')
    return tmp_path / 'annotations' / 'instances.json'


def _yaml(tmp_path, **d):
    f = tmp_path / 'data.yaml'
    f.write_text(yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in d.items()}))
    return f


def _write_back(ds, tmp_path):
    """test.py's detections JSON of the dataset's own labels (score 1) and pycocotools' stats on it."""
    import test as test_script
    writers = test_script.ImageWriters(None, len(ds.label_source['names']), ds.label_source)
    for i in range(len(ds)):
        lb = ds.labels[i].astype(np.float64)
        if not len(lb):
            continue
        w, h = ds.shapes[i]
        xyxy = np.stack(((lb[:, 1] - lb[:, 3] / 2) * w, (lb[:, 2] - lb[:, 4] / 2) * h,
                         (lb[:, 1] + lb[:, 3] / 2) * w, (lb[:, 2] + lb[:, 4] / 2) * h), 1)
        pred = torch.tensor(np.concatenate((xyxy, np.ones((len(lb), 1)), lb[:, :1]), 1))
        writers(Path(ds.img_files[i]), pred, (h, w), ((h, w), ((1.0, 1.0), (0.0, 0.0))))
    stats = test_script._coco_evaluate(writers.jdict, {}, SimpleNamespace(dataset=ds), None, tmp_path)
    return writers.jdict, stats


def _ap_per_threshold(ds, tmp_path):
    """AP at each of COCO's 10 IoU thresholds (0.50:0.05:0.95) of the written-back detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from utils.label_formats import ground_truth
    jdict, stats = _write_back(ds, tmp_path)
    gt, ids, cat_ids, _ = ground_truth(ds)
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(str(next(tmp_path.glob('detections_*.json')))), 'bbox')
    ev.params.imgIds, ev.params.catIds = sorted(ids.values()), cat_ids
    ev.evaluate()
    ev.accumulate()
    p = ev.eval['precision'][:, :, :, 0, -1]  # IoU, recall, class; all areas, 100 detections
    return [float(p[t][p[t] > -1].mean()) for t in range(len(p))], stats, jdict


def _assert_perfect(ds, tmp_path):
    per_iou, stats, jdict = _ap_per_threshold(ds, tmp_path)
    assert per_iou == [1.0] * 10, per_iou
    assert stats[0] == stats[1] == stats[2] == 1.0
    return jdict


def test_coco8_json_round_trip_scores_ap_1(tmp_path):
    ds = LoadImagesAndLabels(str(_coco8_copy(tmp_path / 'd')), 640)
    _assert_perfect(ds, tmp_path)
    written = json.loads(next(tmp_path.glob('detections_*.json')).read_text())
    assert {d['image_id'] for d in written} == {9, 25, 30, 34, 36, 42, 149}  # the JSON's ids (250: no boxes)
    assert ds.label_source['category_ids'][:3] == [1, 2, 3] and ds.label_source['names'][0] == 'person'


@pytest.mark.skipif(not (COCO128 / 'annotations' / 'instances_train2017.json').is_file(),
                    reason='no local coco128 copy (../shared/datasets/coco128)')
def test_coco128_json_round_trip_scores_ap_1(tmp_path):
    root = tmp_path / 'coco128'
    (root / 'images').mkdir(parents=True)
    (root / 'images' / 'train2017').symlink_to(COCO128 / 'images' / 'train2017')  # ROOT/images/SPLIT
    (root / 'annotations').mkdir()
    shutil.copy(COCO128 / 'annotations' / 'instances_train2017.json', root / 'annotations')
    ds = LoadImagesAndLabels(str(root / 'annotations' / 'instances_train2017.json'), 640)
    assert len(ds) == 128 and ds.image_ids is not None
    _assert_perfect(ds, tmp_path)


def _odd_json(tmp_path, extra_crowd=True):
    """coco8 as an annotation tool might export it: non-numeric file names in a subfolder, image ids that are not
    the names, category ids neither contiguous nor in order, two crowd boxes, an image without boxes."""
    gt = json.loads((COCO8 / 'annotations' / 'instances.json').read_text())
    (tmp_path / 'pics' / 'kitchen').mkdir(parents=True)
    new_cat = {c['id']: 1000 - 7 * c['id'] for c in gt['categories']}
    images, names = [], {}
    for k, im in enumerate(gt['images']):
        name = f'kitchen/photo {chr(97 + k)}-final.jpg'
        shutil.copy(COCO8 / 'images' / im['file_name'], tmp_path / 'pics' / name)
        names[im['id']] = 5000 + 37 * k
        images.append(dict(im, id=names[im['id']], file_name=name))
    anns = [dict(a, image_id=names[a['image_id']], category_id=new_cat[a['category_id']],
                 iscrowd=1 if i == 3 and extra_crowd else a['iscrowd']) for i, a in enumerate(gt['annotations'])]
    cats = [dict(c, id=new_cat[c['id']]) for c in gt['categories']][::-1]
    f = tmp_path / 'export.json'
    f.write_text(json.dumps({'images': images, 'annotations': anns, 'categories': cats}))
    return f, gt


def test_odd_json_round_trip_scores_ap_1(tmp_path):
    f, gt = _odd_json(tmp_path)
    data = load_data_config(_yaml(tmp_path, val=f, images=tmp_path / 'pics'), required=('val',))
    assert data['nc'] == 80 and data['names'][0] == 'toothbrush'  # no names: the JSON's categories, in its order
    ds = LoadImagesAndLabels(data['val'], 640)
    assert sum(len(x) for x in ds.labels) == sum(1 for a in gt['annotations'] if not a['iscrowd']) - 1  # 2 crowd
    _assert_perfect(ds, tmp_path)
    written = json.loads(next(tmp_path.glob('detections_*.json')).read_text())
    assert {d['category_id'] for d in written} <= {1000 - 7 * c for c in range(1, 91)}
    assert {d['image_id'] for d in written} <= {5000 + 37 * k for k in range(8)}


def test_names_map_categories_by_name(tmp_path):
    f, _ = _odd_json(tmp_path, extra_crowd=False)
    coco_names = yaml.safe_load((ROOT / 'data' / 'coco8.yaml').read_text())['names']
    data = load_data_config(_yaml(tmp_path, val=f, images=tmp_path / 'pics', names=coco_names), required=('val',))
    ds = LoadImagesAndLabels(data['val'], 640)
    ref = LoadImagesAndLabels(str(_coco8_copy(tmp_path / 'ref')), 640)
    assert ds.label_source['category_ids'][0] == 1000 - 7  # person, class 0, is category 993 of this JSON
    assert all((a == b).all() for a, b in zip(ds.labels, [ref.labels[i] for i in range(len(ref))]))


def _same_items(a, b, keys, tol):
    """Images, image indices and classes equal; coordinates equal to the 6 decimals the YOLO text keeps (within
    `tol`)."""
    worst = 0.0
    for k in keys:
        (ia, la, _, sa), (ib, lb, _, sb) = a[k], b[k]
        assert torch.equal(ia, ib) and sa == sb and la.shape == lb.shape
        assert torch.equal(la[:, :2], lb[:, :2])  # image index and class
        worst = max(worst, float((la - lb).abs().max()) if len(la) else 0.0)
    assert worst <= tol, worst
    return worst


def test_coco8_json_items_equal_yolo_label_items(tmp_path):
    ann = _coco8_copy(tmp_path / 'json')
    shutil.copytree(COCO8, tmp_path / 'yolo', ignore=shutil.ignore_patterns('*.cache', 'annotations'))
    # the text rounds to 6 decimals (5e-7); float32 arithmetic in letterbox, mosaic and random_perspective adds to it
    for kw, keys, tol in (({}, range(8), 1e-6),
                          ({'augment': True, 'hyp': HYP}, [SampleKey(0, i, i) for i in range(8)], 1e-6)):
        a = LoadImagesAndLabels(str(ann), 320, seed=3, **kw)
        b = LoadImagesAndLabels(str(tmp_path / 'yolo' / 'images'), 320, seed=3, **kw)
        assert [Path(f).name for f in a.img_files] == [Path(f).name for f in b.img_files]
        _same_items(a, b, keys, tol)
        worst = max(float(np.abs(x - y).max()) for x, y in zip(a.labels, b.labels) if len(x))
        assert worst <= 5.5e-7, worst  # the labels as read: the JSON's values to the text's 6 decimals
    assert sum(len(x) for x in a.labels) == 38  # the crowd box is not a training target


def _voc_root(tmp_path):
    root = tmp_path / 'VOCdevkit' / 'VOC2007'
    shutil.copytree(VOC8, root)
    (root / 'JPEGImages').symlink_to(COCO8 / 'images')
    return root


def test_voc_round_trip_scores_ap_1_and_leaves_difficult_out(tmp_path):
    root = _voc_root(tmp_path)
    names = yaml.safe_load((ROOT / 'data' / 'coco8.yaml').read_text())['names']
    data = load_data_config(_yaml(tmp_path, val=root / 'ImageSets' / 'Main' / 'val.txt', names=names),
                            required=('val',))
    ds = LoadImagesAndLabels(data['val'], 640)
    assert len(ds) == 8 and sum(len(x) for x in ds.labels) == 38  # the difficult (crowd) object is left out
    _assert_perfect(ds, tmp_path)
    # 1-based, inclusive pixels: <xmin>2</xmin> <xmax>613</xmax> of a 640 wide image is [1, 613), width 612
    first = ds.labels[0][0]
    assert abs(first[3] * 640 - 612) < 1e-3 and abs((first[1] - first[3] / 2) * 640 - 1) < 1e-3
    data = load_data_config(_yaml(tmp_path, val=root, names=names, train_difficult=True), required=('val',))
    assert sum(len(x) for x in LoadImagesAndLabels(data['val'], 640).labels) == 39


def test_voc_fixture_matches_coco8_json():
    """The committed XML is coco8's JSON in VOC's convention (docs/fidelity.md): within the rounding to pixels."""
    from utils.label_formats.voc import parse_annotation, voc_box
    gt = json.loads((COCO8 / 'annotations' / 'instances.json').read_text())
    cats = {c['id']: c['name'] for c in gt['categories']}
    for im in gt['images']:
        _, size, objects = parse_annotation(VOC8 / 'Annotations' / f'{Path(im["file_name"]).stem}.xml')
        anns = [a for a in gt['annotations'] if a['image_id'] == im['id']]
        assert size == (im['width'], im['height']) and len(objects) == len(anns)
        for (name, difficult, *box), a in zip(objects, anns):
            x1, y1, x2, y2 = voc_box(*box)
            x, y, w, h = a['bbox']
            assert name == cats[a['category_id']] and difficult == a['iscrowd'] and max(abs(x1 - x), abs(y1 - y)) <= 0.5
            assert max(abs(x2 - x - w), abs(y2 - y - h)) <= 1.0


def _refusal(source):
    """The one line train.py or test.py prints for the dataset `source` (and its exit status 1)."""
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: LoadImagesAndLabels(str(source), 320), 'train.py')
    msg = e.value.code
    assert isinstance(msg, str) and '\n' not in msg and msg.startswith('train.py: error: '), msg  # exit status 1
    return msg


@pytest.mark.parametrize('text,expect', [
    ('{"images": [], "annotations": [{"image_id": 1, "caption": "a cat"}], "categories": []}', 'lacks or has a bad'),
    ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9}]', 'a list at its top level'),
    ('{"images": [], "annotations": [], "categories": [{"id": 1}]}', "lacks or has a bad 'name'"),
    ('{"images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}', 'is not valid JSON'),
    ('{"images": [{"id": 1, "file_name": "a.j', 'Unterminated string starting at character 35'),
    ('{"info": {}}', 'no images / annotations / categories array'),
    ('{"images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}, {"id": 1, "file_name": "b.jpg", '
     '"width": 9, "height": 9}], "annotations": [], "categories": []}', 'image id 1 appears 2 times'),
])
def test_bad_json_is_refused_in_one_line(tmp_path, text, expect):
    f = tmp_path / 'labels.json'
    f.write_text(text)
    msg = _refusal(f)
    assert str(f) in msg and expect in msg, msg
    assert ' at at ' not in msg  # json's 'starting at' and the stream's 'at character' said it twice


def test_hostile_and_malformed_xml_are_refused_in_one_line(tmp_path):
    root = _voc_root(tmp_path)
    xml = root / 'Annotations' / '000000000025.xml'
    good = xml.read_text()
    xml.write_text('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>\n'
                   + good.replace('<name>giraffe</name>', '<name>&lol2;</name>', 1))
    msg = _refusal(root)
    assert str(xml) in msg and 'refused' in msg and 'DOCTYPE' in msg
    xml.write_text(good.replace('</bndbox>', '', 1))
    msg = _refusal(root)
    assert str(xml) in msg and 'malformed XML' in msg


def test_bad_entries_are_counted_named_and_left_out(tmp_path, caplog):
    f = _coco8_copy(tmp_path)
    gt = json.loads(f.read_text())
    a = gt['annotations']
    im0 = next(im for im in gt['images'] if im['id'] == a[0]['image_id'])
    next(im for im in gt['images'] if im['id'] != im0['id'])['file_name'] = 'gone.jpg'
    extra = [dict(a[0], id=9001, image_id=424242), dict(a[0], id=9002, category_id=999),
             dict(a[0], id=9003, bbox=[10, 10, 0, 5]), dict(a[0], id=9004, bbox=[-20, 10, 50, 5]),
             dict(a[0], id=9005, bbox=[700, 10, 50, 5])]
    f.write_text(json.dumps(dict(gt, annotations=a + extra)))
    with caplog.at_level(logging.INFO):
        ds = LoadImagesAndLabels(str(f), 320)
    text = caplog.text
    assert len(ds) == 7 and 'gone.jpg (missing image file)' in text and '1 image files left out' in text
    assert '1 annotations of image ids not in its images left out (e.g. id 424242)' in text
    assert '1 annotations of category ids not in its categories left out (e.g. id 999)' in text
    assert '1 boxes of zero or negative size and 1 wholly outside their image dropped, 1 clipped' in text
    i = [Path(p).name for p in ds.img_files].index(im0['file_name'])
    n0 = sum(1 for x in a if x['image_id'] == im0['id'] and not x['iscrowd'])
    assert len(ds.labels[i]) == n0 + 1 and ds.labels[i][-1][1] == pytest.approx(15 / im0['width'], abs=1e-6)


def test_cache_warm_start_keyed_on_content_and_kept_on_bad_input(tmp_path, caplog, monkeypatch):
    from utils.label_formats import coco_json
    f = _coco8_copy(tmp_path)
    first = LoadImagesAndLabels(str(f), 320)
    cache = f.with_suffix('.cache')
    assert cache.is_file()

    def no_parse(path):
        raise AssertionError('the JSON was parsed on a warm start')
    monkeypatch.setattr(coco_json, 'read_instances', no_parse)
    with caplog.at_level(logging.INFO):
        warm = LoadImagesAndLabels(str(f), 320, rank=1)  # a DDP rank after rank 0: reads rank 0's cache
    assert 'from cache' in caplog.text and list(warm.image_ids) == list(first.image_ids)
    assert warm.label_source['category_ids'] == first.label_source['category_ids']
    monkeypatch.undo()
    saved = cache.read_bytes()
    stat = f.stat()
    f.write_text(f.read_text().replace('"iscrowd": 1', '"iscrowd": 0'))  # same size: the content decides
    import os
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert sum(len(x) for x in LoadImagesAndLabels(str(f), 320).labels) == 39
    saved = cache.read_bytes()
    f.write_text('{"images": [')
    _refusal(f)
    assert cache.read_bytes() == saved  # nothing already written is lost


def test_checkpoint_carries_category_ids(tmp_path):
    from conftest import tiny_cfg
    from models.checkpoint import load_checkpoint, model_from_checkpoint, model_payload, save_checkpoint
    from models.yolo import Model
    m = Model(tiny_cfg('yolov4-p5', nc=3))
    m.names, m.category_ids = ['a', 'b', 'c'], [7, 3, 42]
    save_checkpoint({'model': model_payload(m)}, tmp_path / 'w.pt')
    back = model_from_checkpoint(load_checkpoint(tmp_path / 'w.pt'), prefer_ema=False)
    assert back.category_ids == [7, 3, 42] and back.names == ['a', 'b', 'c']


def test_data_yaml_path_root_and_images_per_split(tmp_path):
    root = tmp_path / 'ds'
    _coco8_copy(root)
    (root / 'images').rename(root / 'train2017')
    f = _yaml(tmp_path, path='ds', train='annotations/instances.json', val='annotations/instances.json',
              images={'train': 'train2017', 'val': 'train2017'})
    data = load_data_config(f, required=('train', 'val'))
    assert data['nc'] == 80 and data['names'][0] == 'person' and data['images']['val'] == str(root / 'train2017')
    assert len(LoadImagesAndLabels(data['train'], 320)) == 8


def test_folder_of_xml_beside_images_and_yolo_folders_that_hold_xml(tmp_path):
    """LabelImg's layout (a.jpg beside a.xml) is VOC; a YOLO images folder with a labels folder stays YOLO."""
    d = tmp_path / 'labelimg'
    shutil.copytree(COCO8 / 'images', d)
    for x in (VOC8 / 'Annotations').glob('*.xml'):
        shutil.copy(x, d)
    names = yaml.safe_load((ROOT / 'data' / 'coco8.yaml').read_text())['names']
    data = load_data_config(_yaml(tmp_path, train=d, names=names), required=('train',))
    ds = LoadImagesAndLabels(data['train'], 320)
    assert ds.label_source['kind'] == 'voc' and sum(len(x) for x in ds.labels) == 38
    shutil.copytree(COCO8, tmp_path / 'yolo', ignore=shutil.ignore_patterns('*.cache'))
    shutil.copy(VOC8 / 'Annotations' / '000000000009.xml', tmp_path / 'yolo' / 'images')
    assert LoadImagesAndLabels(str(tmp_path / 'yolo' / 'images'), 320).label_source is None
