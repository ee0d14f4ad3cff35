"""Evaluate a detector on a dataset: P, R, mAP@0.5, mAP@0.5:0.95, and COCO AP through pycocotools.

    python test.py --img 896 --conf 0.001 --batch 8 --data data/coco.yaml --weights weights/yolov4-p5.pt --save-json

Every output goes to runs/test/exp* (or --project/--name); nothing outside it is written or deleted.
"""
import json
import logging
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch

from models.backends import input_size
from models.experimental import attempt_load
from utils.data_config import DataConfigError, load_data_config
from utils.datasets import check_label_classes, create_dataloader, workers_stopped
from utils.errors import ArgumentError, ArgumentParser, check_at_least, check_fraction, run_cli
from utils.boxes import clip_coords, scale_coords, xywh2xyxy, xyxy2xywh
from utils.coco_ids import coco80_to_coco91_class
from utils.general import increment_path, options_from_kwargs, set_logging
from utils.label_formats import ground_truth as label_ground_truth
from utils.nms import non_max_suppression
from utils.metrics import ConfusionMatrix, ap_per_class, match_predictions
from utils.plots import plot_images, plot_study
from utils.progress import progress
from utils.torch_utils import select_device, time_synchronized

LOGGER = logging.getLogger('test')


def test(data, weights=None, batch_size=16, imgsz=640, conf_thres=0.001, iou_thres=0.6, save_json=False,
         single_cls=False, augment=False, verbose=False, model=None, dataloader=None, save_dir=None,
         merge=False, save_txt=False, plots=True, device='', task='val', workers=8, compute_loss=None,
         coco_eval='pycocotools', timings=None, channels_last=False, cfg=None):
    """Evaluate `model` (from train.py) or `weights` on the data's `task` split (`cfg`: the darknet cfg of
    .weights, by default the cfg of the same name in models/).

    Returns ((P, R, mAP@0.5, mAP@0.5:0.95, val box, obj, cls losses), per-class mAPs, (inference, NMS, total)
    ms per image). The validation losses are computed with `compute_loss` (train.py's ComputeLoss), else 0.
    Everything written goes into save_dir; with save_dir None nothing is written. A `timings` dict, when given,
    receives the images seen and the seconds of inference, NMS and COCO JSON writing plus scoring.
    `channels_last` runs weights loaded here in that memory format (faster convolutions on many devices; the
    float results differ from the default's in the last bits).
    """
    data = load_data_config(data) if not isinstance(data, dict) else data
    training = model is not None
    save_dir = Path(save_dir) if save_dir else None
    if save_dir is None and (save_json or save_txt):
        raise ArgumentError('save_json and save_txt need a save_dir to write into')
    plot_dir = save_dir if plots else None
    model, device, imgsz = prepare_model(model, weights, device, batch_size, imgsz, channels_last, cfg)
    nc, names = check_classes(model, data, single_cls)
    own_loader = dataloader is None
    if own_loader:
        dataloader = val_loader(data, task, model, device, imgsz, batch_size, single_cls, workers, nc)
    if save_dir is not None:
        (save_dir / 'labels' if save_txt else save_dir).mkdir(parents=True, exist_ok=True)

    writers = ImageWriters(save_dir / 'labels' if save_txt else None, nc if save_json else None,
                           getattr(dataloader.dataset, 'label_source', None))
    with workers_stopped(dataloader if own_loader else None):  # a loader of ours: its workers end with it
        ev = evaluate_batches(model, dataloader, device, conf_thres, iou_thres, merge, augment, compute_loss, nc,
                              writers, plot_dir, names)
    t_metrics = time.perf_counter()
    summary = summarize(ev['stats'], nc, names, plot_dir)
    t_metrics = time.perf_counter() - t_metrics
    log_summary(summary, ev['seen'], names, task, verbose and nc > 1)
    times = tuple(x / max(ev['seen'], 1) * 1E3 for x in (ev['t_inference'], ev['t_nms'], ev['t_inference'] +
                                                         ev['t_nms']))
    if not training:
        LOGGER.info('Speed: %.1f/%.1f/%.1f ms inference/NMS/total per %gx%g image at batch-size %g',
                    *times, imgsz, imgsz, batch_size)
    if plot_dir is not None:
        ev['confusion'].plot(save_dir=plot_dir, names=names)
    map50, map_ = summary['map50'], summary['map']
    t_coco = time.perf_counter()
    if save_json and writers.jdict:
        coco = _coco_evaluate(writers.jdict, data, dataloader, weights, save_dir, coco_eval, timings)
        if coco is not None:
            map_, map50 = coco[:2]
    elif save_json:
        LOGGER.info('No detections: nothing to write for pycocotools (AP 0)')
    if timings is not None:
        timings.update(images=ev['seen'], inference=ev['t_inference'], nms=ev['t_nms'], metrics=t_metrics,
                       coco=time.perf_counter() - t_coco)
    if not training and save_dir is not None:
        LOGGER.info('Results saved to %s%s', save_dir, _saved_listing(save_dir))
    model.float()
    maps = np.zeros(nc) + map_
    for i, c in enumerate(summary['ap_class']):
        maps[c] = summary['ap'][i]
    losses = (ev['loss'].cpu() / max(len(dataloader), 1)).tolist()
    return (summary['mp'], summary['mr'], map50, map_, *losses), maps, times


def prepare_model(model, weights, device, batch_size, imgsz, channels_last=False, cfg=None):
    """(model in eval mode, device, image size): train.py's model as given (a float16 copy on CUDA, so its EMA is
    not rounded in place), else `weights` loaded (float16 on CUDA, channels_last if asked) with imgsz rounded to
    its stride."""
    if model is not None:
        device = next(model.parameters()).device
        if device.type != 'cpu':
            model = deepcopy(model)
    else:
        device = select_device(device, batch_size=batch_size)
        model = attempt_load(weights, map_location=device, cfg=cfg)
        imgsz, _ = input_size(model, imgsz)  # a static export: its own size
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
    model.half() if device.type != 'cpu' else model.float()
    return model.eval(), device, imgsz


def check_classes(model, data, single_cls):
    """(nc, names) of the evaluation; the model's class count must match the data's."""
    nc = 1 if single_cls else int(data['nc'])
    model_nc = int(getattr(model, 'nc', nc))
    if model_nc != nc:
        raise DataConfigError(
            f'the model has {model_nc} classes but {data.get("yaml_file", "the data")} has nc={nc}'
            f'{" (--single-cls)" if single_cls else ""}: evaluate weights trained for this data (python train.py '
            f'--data {data.get("yaml_file", "DATA")} --weights WEIGHTS fine-tunes them), or a data yaml with '
            f'nc: {model_nc}')
    names = ['item'] if single_cls else list(getattr(model, 'names', data.get('names') or range(nc)))
    return nc, names


def val_loader(data, task, model, device, imgsz, batch_size, single_cls, workers, nc):
    """The evaluation loader (rectangular batches, pad 0.5); label class ids checked before any inference."""
    if not data.get(task):
        raise DataConfigError(f'{data.get("yaml_file", "data yaml")} has no {task!r} entry: add the images to '
                              f'evaluate as {task}: PATH')
    if device.type != 'cpu':  # warm up
        model(torch.zeros((1, 3, imgsz, imgsz), device=device).half())
    rect = getattr(model, 'static_shape', None) is None  # a static export takes squares only
    loader = create_dataloader(data[task], imgsz, batch_size, int(model.stride.max()), single_cls=single_cls,
                               pad=0.5, rect=rect, workers=workers, prefix=f'{task}: ')[0]
    check_label_classes(loader.dataset, nc)
    return loader


class ImageWriters:
    """Per-image outputs: YOLO txt labels (into labels_dir) and COCO JSON rows (collected in .jdict).

    labels_dir None: no txt; nc None: no JSON. Boxes are mapped back to the original image first. With the
    label_source of a dataset read from a COCO JSON or VOC XML (utils/label_formats), classes are written as its
    category ids and images keyed by path (their ids come from the dataset); else 80 classes as COCO's.
    """

    def __init__(self, labels_dir=None, nc=None, label_source=None):
        self.labels_dir, self.nc, self.jdict = labels_dir, nc, []
        self.coco91 = label_source['category_ids'] if label_source else coco80_to_coco91_class()
        self.by_path = label_source is not None

    def __call__(self, path, pred, input_shape, shapes):
        if self.labels_dir is None and self.nc is None:
            return
        box = scale_coords(input_shape, pred[:, :4].clone(), shapes[0], shapes[1])
        if self.labels_dir is not None:
            gn = torch.tensor(shapes[0], device=box.device)[[1, 0, 1, 0]]  # original w, h, w, h
            with open(self.labels_dir / f'{path.stem}.txt', 'w') as f:
                for cls, xywh in zip(pred[:, 5].tolist(), (xyxy2xywh(box) / gn).tolist()):
                    f.write(('%g ' * 5 + '\n') % (cls, *xywh))
        if self.nc is not None:
            b = xyxy2xywh(box)
            b[:, :2] -= b[:, 2:] / 2  # centre -> top-left corner
            for pi, bi in zip(pred.tolist(), b.tolist()):  # image_id: the file name until it is mapped
                self.jdict.append({'image_id': str(path) if self.by_path else path.name,
                                   'category_id': self.coco91[int(pi[5])] if self.nc == 80 or self.by_path
                                   else int(pi[5]),
                                   'bbox': [round(x, 3) for x in bi], 'score': round(pi[4], 5)})


def evaluate_batches(model, dataloader, device, conf_thres, iou_thres, merge, augment, compute_loss, nc, writers,
                     plot_dir, names):
    """Inference, NMS and per-image matching over the loader. Returns a dict: stats (per image: correct (n, 10),
    conf, class, target classes), seen, t_inference, t_nms (s), loss (3,), confusion (ConfusionMatrix)."""
    half = device.type != 'cpu'
    iouv = torch.linspace(0.5, 0.95, 10, device=device)
    out = {'stats': [], 'seen': 0, 't_inference': 0., 't_nms': 0., 'loss': torch.zeros(3, device=device),
           'confusion': ConfusionMatrix(nc=nc)}
    desc = ('%20s' + '%12s' * 6) % ('Class', 'Images', 'Targets', 'P', 'R', 'mAP@.5', 'mAP@.5:.95')
    for batch_i, (img, targets, paths, shapes) in enumerate(progress(dataloader, desc=desc, leave=False)):
        img = img.to(device, non_blocking=True)
        img = (img.half() if half else img.float()) / 255.0
        targets = targets.to(device)
        _, _, height, width = img.shape
        whwh = torch.tensor([width, height, width, height], device=device)
        with torch.no_grad():
            t = time_synchronized()
            inf_out, train_out = model(img, augment=augment)
            out['t_inference'] += time_synchronized() - t
            if compute_loss is not None and train_out is not None:
                out['loss'] += compute_loss([x.float() for x in train_out], targets)[1][:3]
            t = time_synchronized()
            output = non_max_suppression(inf_out, conf_thres=conf_thres, iou_thres=iou_thres, merge=merge)
            out['t_nms'] += time_synchronized() - t
        for si, pred in enumerate(output):
            labels = targets[targets[:, 0] == si, 1:]
            labels_xyxy = torch.cat((labels[:, 0:1], xywh2xyxy(labels[:, 1:5]) * whwh), 1)
            out['seen'] += 1
            clip_coords(pred, (height, width))
            if len(pred):
                writers(Path(paths[si]), pred, img[si].shape[1:], shapes[si])
            if plot_dir is not None and len(labels):  # missed objects count as background (FN) too
                out['confusion'].process_batch(pred, labels_xyxy)
            if len(pred) or len(labels):
                out['stats'].append((match_predictions(pred, labels_xyxy, iouv).cpu(), pred[:, 4].cpu(),
                                     pred[:, 5].cpu(), labels[:, 0].tolist()))
        if plot_dir is not None and batch_i < 3:
            plot_images(img, targets, paths, plot_dir / f'test_batch{batch_i}_labels.jpg', names)
            plot_images(img, _output_to_target(output), paths, plot_dir / f'test_batch{batch_i}_pred.jpg', names)
    return out


def summarize(stats, nc, names, plot_dir=None):
    """Per-class and mean P, R, AP@0.5, AP@0.5:0.95 from the per-image stats (zeros without true positives, as
    published); the PR curve goes to plot_dir."""
    stats = [np.concatenate(x, 0) for x in zip(*stats)] if stats else []
    nt = np.bincount(stats[3].astype(np.int64), minlength=nc) if len(stats) else np.zeros(nc, dtype=int)
    out = {'nt': nt, 'mp': 0., 'mr': 0., 'map50': 0., 'map': 0., 'ap_class': [], 'ap': [], 'p': [], 'r': [],
           'ap50': []}
    if len(stats) and len(stats[3]):
        p, r, ap, f1, ap_class = ap_per_class(*stats, plot=plot_dir is not None, save_dir=plot_dir, names=names)
        p, r, ap50, ap = p[:, 0], r[:, 0], ap[:, 0], ap.mean(1)
        out.update(mp=p.mean(), mr=r.mean(), map50=ap50.mean(), map=ap.mean(), ap_class=ap_class, ap=ap, p=p, r=r,
                   ap50=ap50)
    return out


def log_summary(s, seen, names, task, per_class):
    pf = '%20s' + '%12.3g' * 6
    LOGGER.info(('%20s' + '%12s' * 6), 'Class', 'Images', 'Targets', 'P', 'R', 'mAP@.5', 'mAP@.5:.95')
    LOGGER.info(pf, 'all', seen, s['nt'].sum(), s['mp'], s['mr'], s['map50'], s['map'])
    if not s['nt'].sum():
        LOGGER.warning('WARNING: no labels in the %s set: metrics cannot be computed', task)
    if per_class:
        for i, c in enumerate(s['ap_class']):
            LOGGER.info(pf, names[c], seen, s['nt'][c], s['p'][i], s['r'][i], s['ap50'][i], s['ap'][i])


def _saved_listing(save_dir):
    """' (a.json, labels/ (8 files), confusion_matrix.png, ...)' for the closing line."""
    items = []
    for p in sorted(save_dir.iterdir()):
        items.append(f'{p.name}/ ({len(list(p.iterdir()))} files)' if p.is_dir() else p.name)
    return f': {", ".join(items)}' if items else ' (nothing written)'


def _output_to_target(output):
    """NMS output per image -> (n, 7) [image, class, x, y, w, h, conf] for plot_images."""
    rows = [torch.cat((torch.full((len(o), 1), i), o[:, 5:6].cpu(), xyxy2xywh(o[:, :4].cpu()), o[:, 4:5].cpu()), 1)
            for i, o in enumerate(output)]
    return torch.cat(rows, 0).numpy() if rows else np.zeros((0, 7))


def coco_image_ids(img_files, gt=None, ann_path=''):
    """{file name: COCO image id} of the evaluated images.

    With ground truth that has file names, ids come from its `file_name` (basename) -> `id` map; without
    file names (or without ground truth) from the numeric file stem, as published. Every evaluated image
    must be in the ground truth: scoring a subset would print a wrong AP, so that is an error naming counts.
    """
    names = [Path(f).name for f in img_files]
    images = gt.get('images', []) if isinstance(gt, dict) else []
    if any('file_name' in im for im in images):
        by_name = {Path(im['file_name']).name: im['id'] for im in images if 'file_name' in im}
        ids = {n: by_name.get(n) for n in names}
    else:
        ids = {n: int(Path(n).stem) if Path(n).stem.isnumeric() else Path(n).stem for n in names}
        if gt is not None:
            known = {im.get('id') for im in images}
            ids = {n: i if i in known else None for n, i in ids.items()}
    missing = sorted(n for n, i in ids.items() if i is None)
    if gt is not None and missing:
        raise DataConfigError(f'{len(missing)} of {len(names)} evaluated images are not in the ground truth '
                              f'{ann_path} (e.g. {missing[0]}): COCO AP would score only a subset; give the '
                              f'val_annotations that belong to these images')
    return ids


def _read_ground_truth(ann):
    """The COCO ground-truth dict of val_annotations, or None (with a warning) when it cannot be read."""
    if not ann or not Path(ann).is_file():
        return None
    try:
        with open(ann) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        LOGGER.warning('WARNING: ground truth %s could not be read (%s)', ann, e)
        return None


COCO_BACKENDS = ('pycocotools', 'faster-coco-eval')


def coco_score(gt, results_file, img_ids, backend='pycocotools', cat_ids=None):
    """The 12 COCO bbox statistics (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l) of a results JSON.

    pycocotools is the reference; faster-coco-eval (a C++ drop-in, when installed) gives the same numbers faster.
    """
    if backend == 'faster-coco-eval':
        try:
            from faster_coco_eval import COCO, COCOeval_faster as BoxScorer
        except ImportError:
            raise ArgumentError('--coco-eval faster-coco-eval: the package is not installed (pip install '
                                'faster-coco-eval), or use the default pycocotools') from None
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as BoxScorer
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    ev = BoxScorer(coco_gt, coco_gt.loadRes(str(results_file)), 'bbox')
    ev.params.imgIds = img_ids
    if cat_ids:  # a COCO JSON's categories that the data yaml's names leave out are not scored
        ev.params.catIds = cat_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.asarray(ev.stats[:12], dtype=np.float64)


def _coco_evaluate(jdict, data, dataloader, weights, save_dir, backend='pycocotools', timings=None):
    """Write the detections JSON and score it (pycocotools, or faster-coco-eval); returns the stats or None.
    `timings` receives the seconds of the JSON (ground truth read, ids matched, file written) and of scoring."""
    t = time.perf_counter()
    timings = {} if timings is None else timings
    w = Path(weights[0] if isinstance(weights, (list, tuple)) else weights).stem if weights else ''
    cat_ids = None
    if getattr(dataloader.dataset, 'label_source', None):  # scored against the JSON (or VOC XML) it was read from
        gt, ids, cat_ids, ann = label_ground_truth(dataloader.dataset)
    else:
        ann = data.get('val_annotations')
        gt = _read_ground_truth(ann)
        ids = coco_image_ids(dataloader.dataset.img_files, gt, ann)
    jdict = [dict(d, image_id=ids[d['image_id']]) for d in jdict]
    file = save_dir / f'detections_val2017_{w}_results.json'
    with open(file, 'w') as f:
        json.dump(jdict, f)
    LOGGER.info('COCO detections JSON saved to %s', file)
    timings['json'] = time.perf_counter() - t
    if gt is None:
        LOGGER.warning('WARNING: no COCO ground truth (val_annotations: %s): pycocotools AP not computed; '
                       'the mAP above is this project\'s own', ann)
        return None
    img_ids = sorted(set(ids.values()))
    try:
        t = time.perf_counter()
        stats = coco_score(gt, file, img_ids, backend, cat_ids)
        timings['scoring'] = time.perf_counter() - t
    except ImportError as e:
        LOGGER.warning('WARNING: pycocotools unavailable (%s): the mAP above is this project\'s own', e)
        return None
    LOGGER.info('%s: AP %.4f, AP50 %.4f over %d images', backend, stats[0], stats[1], len(img_ids))
    return stats


def parse_opt(argv=None):
    parser = ArgumentParser(prog='test.py', description='Evaluate Scaled-YOLOv4 on a dataset.')
    parser.add_argument('--weights', nargs='+', type=str, default=['weights/yolov4-p5.pt'],
                        help='model.pt or darknet .weights path(s)')
    parser.add_argument('--cfg', type=str, default=None, help='darknet cfg of --weights X.weights '
                        '(default: models/X.cfg)')
    parser.add_argument('--data', type=str, default='data/coco.yaml', help='data.yaml path')
    parser.add_argument('--batch-size', '--batch', type=int, default=32, help='batch size')
    parser.add_argument('--img-size', '--img', type=int, default=640, help='inference size (pixels)')
    parser.add_argument('--conf-thres', '--conf', type=float, default=0.001, help='object confidence threshold')
    parser.add_argument('--iou-thres', '--iou', type=float, default=0.65, help='IoU threshold for NMS')
    parser.add_argument('--save-json', action='store_true', help='write a COCO JSON and score it with pycocotools')
    parser.add_argument('--task', default='val', choices=['val', 'test', 'study', 'speed'], help='what to run')
    parser.add_argument('--device', default='', help='cuda device, i.e. 0 or 0,1,2,3 or cpu '
                           '(default: the GPU when there is one, else cpu)')
    parser.add_argument('--single-cls', action='store_true', help='treat as single-class dataset')
    parser.add_argument('--augment', action='store_true', help='augmented inference (TTA)')
    parser.add_argument('--merge', action='store_true', help='use Merge NMS')
    parser.add_argument('--verbose', action='store_true', help='report mAP by class')
    parser.add_argument('--save-txt', action='store_true', help='save results to *.txt')
    parser.add_argument('--workers', type=int, default=8, help='maximum dataloader workers')
    parser.add_argument('--project', default='runs/test', help='save to project/name')
    parser.add_argument('--name', default='exp', help='save to project/name')
    parser.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    parser.add_argument('--coco-eval', default='pycocotools', choices=COCO_BACKENDS,
                        help='COCO AP with pycocotools (the reference) or faster-coco-eval (same numbers, faster)')
    parser.add_argument('--channels-last', action='store_true',
                        help='channels_last memory format (faster on many CPUs and GPUs; last float bits differ)')
    return parser.parse_args(argv)


def check_options(opt):
    """Refuse flag values that make no sense, naming the flag (before anything is written)."""
    check_at_least('--batch-size', opt.batch_size, 1)
    check_at_least('--img-size', opt.img_size, 1)
    check_at_least('--workers', opt.workers, 0)
    check_fraction('--conf-thres', opt.conf_thres)
    check_fraction('--iou-thres', opt.iou_thres, allow_zero=False)


def run(opt=None, **kwargs):
    """Run test.py's task: run(weights=..., data=..., img_size=896, task='val', ...) (keyword names are the
    command-line flags with underscores) or run(parsed_options). Returns the results of the last evaluation."""
    opt = opt or options_from_kwargs(parse_opt, kwargs, 'test.run')
    check_options(opt)
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)
    common = dict(batch_size=opt.batch_size, single_cls=opt.single_cls, augment=opt.augment, verbose=opt.verbose,
                  merge=opt.merge, device=opt.device, workers=opt.workers, coco_eval=opt.coco_eval,
                  channels_last=opt.channels_last, cfg=opt.cfg)
    if opt.task in ('val', 'test'):
        return test(opt.data, opt.weights, imgsz=opt.img_size, conf_thres=opt.conf_thres, iou_thres=opt.iou_thres,
                    save_json=opt.save_json, save_dir=save_dir, save_txt=opt.save_txt, task=opt.task, **common)
    if opt.task == 'speed':
        return test(opt.data, opt.weights, imgsz=opt.img_size, conf_thres=0.25, iou_thres=0.45, save_dir=save_dir,
                    plots=False, **common)
    # study: mAP and speed against image size
    sizes = list(range(max(opt.img_size // 2, 128), opt.img_size * 3 // 2 + 1, 128))
    rows = []
    for size in sizes:
        LOGGER.info('Study: image size %d', size)
        res, _, times = test(opt.data, opt.weights, imgsz=size, conf_thres=opt.conf_thres, iou_thres=opt.iou_thres,
                             save_dir=save_dir / f'size{size}', plots=False, **common)
        rows.append(list(res) + [times[2]])
    np.savetxt(save_dir / 'study.txt', np.array(rows), fmt='%10.4g')
    plot_study(sizes, rows, save_dir / 'study.png')
    LOGGER.info('Study written to %s', save_dir)
    return rows


def main(argv=None):
    set_logging()
    opt = parse_opt(argv)
    opt.save_json |= Path(opt.data).name == 'coco.yaml' and opt.task in ('val', 'test')
    return run(opt)


if __name__ == '__main__':
    run_cli(main, 'test.py')
