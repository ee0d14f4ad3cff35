"""Detect objects in images, folders, globs, videos, webcams and streams.

    python detect.py --weights weights/yolov4-p5.pt --source data/coco8/images --img-size 896

Outputs go to runs/detect/exp* (or --project/--name): annotated images under their own names, videos as
videos (same frame count, size and rate), and with --save-txt YOLO-format labels/<stem>.txt (_<frame> for
video frames). Nothing is deleted.
"""
import logging
import os
import sys
import time
from pathlib import Path

import cv2
import torch

from models.backends import input_size
from models.experimental import attempt_load
from utils.datasets import LoadImages, LoadStreams
from utils.errors import ArgumentError, ArgumentParser, check_at_least, check_fraction, run_cli
from utils.boxes import scale_coords, xyxy2xywh
from utils.general import increment_path, set_logging
from utils.nms import non_max_suppression
from utils.plots import color_list, plot_one_box
from utils.torch_utils import select_device, time_synchronized

LOGGER = logging.getLogger('detect')


def _is_stream(source):
    s = str(source)
    return s.isnumeric() or s.lower().startswith(('rtsp://', 'rtmp://', 'http://', 'https://')) or s.endswith('.txt')


def check_display():
    """--view-img needs a window: refused up front where there is none, since OpenCV's Qt aborts the whole
    process (exit 134) when it cannot open one, and an OpenCV build without a GUI raises on the first frame."""
    gui = cv2.getBuildInformation().split('GUI:', 1)[-1].split('\n', 1)[0].strip()
    if gui.upper() in ('NONE', ''):
        raise ArgumentError('--view-img: this OpenCV has no GUI (a headless build): drop --view-img (the annotated '
                            'images are saved), or install opencv-python instead of opencv-python-headless')
    if sys.platform.startswith('linux') and not (os.environ.get('DISPLAY') or os.environ.get('WAYLAND_DISPLAY')):
        raise ArgumentError('--view-img: no display to show results on (DISPLAY is not set: a headless machine, or '
                            'ssh without -X): drop --view-img; the annotated images are saved')


def load_source(source, imgsz, rect=True):
    """(dataset, is_stream): streams and webcams, or image/video files, folders and globs. rect False: every
    image letterboxed to imgsz x imgsz (a static export)."""
    if _is_stream(source):
        streams = LoadStreams(source, img_size=imgsz)
        streams.rect = streams.rect and rect
        return streams, True
    return LoadImages(source, img_size=imgsz, auto=rect), False


def draw_detections(im0, det, names, colors):
    """Boxes with 'class conf' labels on a BGR image (in place)."""
    for *xyxy, conf, cls in reversed(det.tolist()):
        plot_one_box(xyxy, im0, label=f'{names[int(cls)]} {conf:.2f}', color=colors[int(cls) % len(colors)],
                     line_thickness=3)


def write_txt_labels(txt_path, det, im_shape, save_conf):
    """Append YOLO-format rows (class xc yc w h [conf], normalised to the original image) to txt_path.txt."""
    gn = torch.tensor(im_shape)[[1, 0, 1, 0]].to(det.device)
    xywhn = (xyxy2xywh(det[:, :4]) / gn).tolist()
    with open(f'{txt_path}.txt', 'a') as f:
        for (*_, conf, cls), xywh in zip(reversed(det.tolist()), reversed(xywhn)):
            row = (cls, *xywh, conf) if save_conf else (cls, *xywh)
            f.write(('%g ' * len(row)).rstrip() % row + '\n')


class VideoWriters:
    """One cv2.VideoWriter per output video or stream, with the input's size and frame rate. A file video is
    finished when the next one starts; streams are written side by side until the end."""

    def __init__(self, streams):
        self.streams, self.writers = streams, {}

    def write(self, save_path, im0, vid_cap):
        if save_path not in self.writers:
            if vid_cap is not None:
                fps = vid_cap.get(cv2.CAP_PROP_FPS) or 30
                w, h = int(vid_cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(vid_cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            else:
                fps, (h, w) = 30, im0.shape[:2]
            for done in [k for k in self.writers if not self.streams]:
                self.writers.pop(done).release()
            self.writers[save_path] = cv2.VideoWriter(save_path, cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))
        self.writers[save_path].write(im0)

    def close(self):
        for writer in self.writers.values():
            writer.release()
        self.writers = {}


def _frame_name(dataset, path, streams, i):
    """How the log names an input: its file, 'video i/n (frame k/m) file', or 'stream i'."""
    if streams:
        return f'stream {i} ({path}) frame {dataset.count}'
    if getattr(dataset, 'mode', 'image') == 'video':
        return f'video {dataset.count + 1}/{dataset.nf} (frame {dataset.frame}/{dataset.nframes}) {path}'
    return f'image {dataset.count}/{dataset.nf} {path}'


def detect(weights='weights/yolov4-p5.pt', source='data/coco8/images', img_size=640, conf_thres=0.4,
           iou_thres=0.5, device='', view_img=False, save_txt=False, save_conf=False, nosave=False, classes=None,
           agnostic_nms=False, augment=False, project='runs/detect', name='exp', exist_ok=False, channels_last=False,
           cfg=None):
    """Run detection; returns (save_dir, {path: detections tensor (n, 6) in original-image pixels}); save_dir is
    None when nothing is written (nosave without save_txt).
    `channels_last`: the model in that memory format (faster on many devices; last float bits differ); `cfg`: the
    darknet cfg of .weights (default: the cfg of the same name in models/)."""
    check_at_least('--img-size', img_size, 1)
    check_fraction('--conf-thres', conf_thres)
    check_fraction('--iou-thres', iou_thres, allow_zero=False)
    if view_img:
        check_display()
    device = select_device(device)
    half = device.type != 'cpu'
    model = attempt_load(weights, map_location=device, cfg=cfg)
    imgsz, rect = input_size(model, img_size)  # a static export: its own size, no rectangles
    if half:
        model.half()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    names, colors = list(model.names), color_list()
    dataset, streams = load_source(source, imgsz, rect)
    save_dir = None  # --nosave without --save-txt writes nothing
    if save_txt or not nosave:  # made once the weights, source and display are good
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
        (save_dir / 'labels' if save_txt else save_dir).mkdir(parents=True, exist_ok=True)

    videos, results, n_frames, n_boxes, t0 = VideoWriters(streams), {}, 0, 0, time.time()
    try:  # a stop signal or an error: the videos written so far are still closed (playable)
        for path, img, im0s, vid_cap in dataset:
            img = torch.from_numpy(img).to(device)
            img = (img.half() if half else img.float()) / 255.0
            if img.ndimension() == 3:
                img = img.unsqueeze(0)
            t1 = time_synchronized()
            with torch.no_grad():
                pred = model(img, augment=augment)[0]
            pred = non_max_suppression(pred, conf_thres, iou_thres, classes=classes, agnostic=agnostic_nms)
            t2 = time_synchronized()
            quit_requested = False
            for i, det in enumerate(pred):
                p, im0 = (Path(path[i]), im0s[i].copy()) if streams else (Path(path), im0s)
                is_video = streams or dataset.mode == 'video'
                frame = dataset.count if streams else getattr(dataset, 'frame', 0)
                if len(det):
                    det[:, :4] = scale_coords(img.shape[2:], det[:, :4], im0.shape).round()
                    if save_txt:
                        write_txt_labels(save_dir / 'labels' / (p.stem + (f'_{frame}' if is_video else '')), det,
                                         im0.shape, save_conf)
                    if not nosave or view_img:
                        draw_detections(im0, det, names, colors)
                n_frames, n_boxes = n_frames + 1, n_boxes + len(det)
                results[str(p) if not is_video else f'{p}:{frame}'] = det.cpu()
                counts = ', '.join(f'{int((det[:, -1] == c).sum())} {names[int(c)]}' for c in det[:, -1].unique())
                LOGGER.info('%s %gx%g: %s (%.3fs)', _frame_name(dataset, p, streams, i), *img.shape[2:],
                            counts or 'no detections', t2 - t1)
                if view_img:
                    cv2.imshow(str(p), im0)
                    quit_requested |= cv2.waitKey(1) == ord('q')
                if nosave:
                    continue
                if is_video:
                    videos.write(str(save_dir / (p.name if not streams else f'stream{i}.mp4')), im0, vid_cap)
                else:
                    cv2.imwrite(str(save_dir / p.name), im0)
            if quit_requested:  # 'q' in a display window
                cv2.destroyAllWindows()
                break
    finally:
        videos.close()
    saved = 'nothing saved (--nosave)' if save_dir is None else f'results saved to {save_dir}' + \
        (f' (labels in {save_dir / "labels"})' if save_txt else '')
    LOGGER.info('Done: %d images/frames, %d boxes in %.1fs; %s', n_frames, n_boxes, time.time() - t0, saved)
    return save_dir, results


def parse_opt(argv=None):
    p = ArgumentParser(prog='detect.py', description='Run Scaled-YOLOv4 detection.')
    p.add_argument('--weights', nargs='+', type=str, default=['weights/yolov4-p5.pt'],
                   help='model.pt or darknet .weights path(s)')
    p.add_argument('--cfg', type=str, default=None, help='darknet cfg of --weights X.weights (default: models/X.cfg)')
    p.add_argument('--source', type=str, default='data/coco8/images', help='file/folder/glob/video, 0 for webcam, '
                   'rtsp/http URL, or a .txt of streams')
    p.add_argument('--img-size', '--img', type=int, default=640, help='inference size (pixels)')
    p.add_argument('--conf-thres', '--conf', type=float, default=0.4, help='object confidence threshold')
    p.add_argument('--iou-thres', '--iou', type=float, default=0.5, help='IoU threshold for NMS')
    p.add_argument('--device', default='', help='cuda device, i.e. 0 or 0,1,2,3 or cpu '
                      '(default: the GPU when there is one, else cpu)')
    p.add_argument('--view-img', action='store_true', help='display results')
    p.add_argument('--save-txt', action='store_true', help='save results to labels/*.txt')
    p.add_argument('--save-conf', action='store_true', help='save confidences in --save-txt labels')
    p.add_argument('--nosave', action='store_true', help='do not save images/videos')
    p.add_argument('--classes', nargs='+', type=int, help='filter by class: --classes 0, or --classes 0 2 3')
    p.add_argument('--agnostic-nms', action='store_true', help='class-agnostic NMS')
    p.add_argument('--augment', action='store_true', help='augmented inference')
    p.add_argument('--project', default='runs/detect', help='save results to project/name')
    p.add_argument('--name', default='exp', help='save results to project/name')
    p.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    p.add_argument('--channels-last', action='store_true',
                   help='channels_last memory format (faster on many CPUs and GPUs; last float bits differ)')
    return p.parse_args(argv)


def main(argv=None):
    set_logging()
    opt = parse_opt(argv)
    weights = opt.weights[0] if len(opt.weights) == 1 else opt.weights
    return detect(weights=weights, **{k: v for k, v in vars(opt).items() if k != 'weights'})


if __name__ == '__main__':
    run_cli(main, 'detect.py')
