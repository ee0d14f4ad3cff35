"""Inference sources for detect.py: image files, folders, globs and videos; webcams and network streams.

Each iteration yields (path, letterboxed RGB CHW uint8 image(s), original BGR image(s), video capture or
None). Letterboxing is the published one (auto: padded only to a multiple of 128).
"""
import glob
import logging
import os
import time
from pathlib import Path
from threading import Thread

import cv2
import numpy as np

from utils.augmentations import letterbox
from utils.errors import UserError
from utils.label_cache import IMG_FORMATS, VID_FORMATS, jpeg_truncation

LOGGER = logging.getLogger(__name__)


class SourceError(UserError, FileNotFoundError):
    """A detection source that does not exist or cannot be opened; the message names it."""


def to_chw_rgb(img):
    """BGR HWC image(s) (or a BHWC stack) -> contiguous RGB CHW (BCHW), as the models take them."""
    if img.ndim == 4:
        return np.ascontiguousarray(img[..., ::-1].transpose(0, 3, 1, 2))
    return np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))


def _is_text(path):
    """Whether a file looks like a text list of paths (its first 4 KiB decode as UTF-8, without NUL bytes)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(4096)
        head.decode('utf-8', errors='strict' if len(head) < 4096 else 'ignore')
        return b'\0' not in head
    except (UnicodeDecodeError, OSError):
        return False


def list_files(path, formats, error=None):
    """Sorted files with one of `formats` (extensions) from a file, a folder, a glob, a list file (e.g. .txt,
    one path per line, relative paths resolved against the list's folder; symlinks kept) or a list of those.

    A path that does not exist raises `error` (default SourceError) naming it.
    """
    error = error or SourceError
    files = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = Path(p)
        if p.is_dir():
            files += [str(x) for x in p.glob('*.*')]
        elif p.is_file() and p.suffix.lower() not in formats and _is_text(p):  # a list of files, one per line
            for line in p.read_text().splitlines():
                line = line.strip()
                if line:
                    files.append(line if os.path.isabs(line) else os.path.join(p.parent, line))
        elif p.is_file():
            files.append(str(p))  # kept only if its extension is one of `formats`
        elif any(c in str(p) for c in '*?['):
            files += glob.glob(str(p), recursive=True)
        else:
            raise error(f'{p} does not exist (expected a file, a folder, a .txt list of files or a glob)')
    return sorted(os.path.normpath(x) for x in files if os.path.splitext(x)[-1].lower() in formats)


class LoadImages:
    """Images and videos from a file, a folder, a glob or a list of those; videos are read frame by frame.

    An unreadable image or video is named in a warning and skipped; the other files are still processed.
    """

    def __init__(self, path, img_size=640, auto=True):
        files = list_files(path, IMG_FORMATS + VID_FORMATS)
        images = [x for x in files if os.path.splitext(x)[-1].lower() in IMG_FORMATS]
        videos = [x for x in files if os.path.splitext(x)[-1].lower() in VID_FORMATS]
        self.img_size = img_size
        self.auto = auto
        self.files = images + videos
        self.nf = len(self.files)
        self.video_flag = [False] * len(images) + [True] * len(videos)
        self.mode = 'image'
        self.cap = None
        self.frame = 0
        self.nframes = 0
        if not self.nf:
            raise SourceError(f'no images or videos found in {path}. Supported formats: images '
                                    f'{", ".join(IMG_FORMATS)}; videos {", ".join(VID_FORMATS)}')

    def __iter__(self):
        self.count = 0
        return self

    def __next__(self):
        while True:
            if self.count == self.nf:
                raise StopIteration
            path = self.files[self.count]
            if self.video_flag[self.count]:
                self.mode = 'video'
                if self.cap is None and not self.new_video(path):
                    self.count += 1
                    continue
                ret, img0 = self.cap.read()
                if not ret:
                    if self.frame == 0:
                        LOGGER.warning('WARNING: video %s gave no frame (corrupt or empty), skipped', path)
                    self.cap.release()
                    self.cap = None
                    self.count += 1
                    continue
                self.frame += 1
                LOGGER.debug('video %d/%d (%d/%d) %s', self.count + 1, self.nf, self.frame, self.nframes, path)
            else:
                self.mode = 'image'
                self.count += 1
                img0 = cv2.imread(path)
                if img0 is None:
                    LOGGER.warning('WARNING: image %s could not be read (corrupt or not an image), skipped', path)
                    continue
                if Path(path).suffix.lower() in ('.jpg', '.jpeg') and jpeg_truncation(path):
                    LOGGER.warning('WARNING: image %s is a truncated JPEG: only the part that decoded is searched',
                                   path)
            img = letterbox(img0, new_shape=self.img_size, auto=self.auto)[0]
            return path, to_chw_rgb(img), img0, self.cap

    def new_video(self, path):
        """Open a video; False (with a warning naming it) when it cannot be opened or has no frame."""
        self.frame = 0
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            LOGGER.warning('WARNING: video %s could not be opened (corrupt or an unsupported codec), skipped', path)
            self.cap = None
            return False
        self.nframes = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        return True

    def __len__(self):
        return self.nf


class LoadStreams:
    """Several streams (webcam indices, rtsp/http URLs, or a .txt listing them), one reader thread each.

    A stream that drops is reopened up to `retries` times; then it ends, and iteration stops cleanly when
    every stream has ended. Frames are letterboxed to a common shape when they share one.
    """

    def __init__(self, sources='streams.txt', img_size=640, retries=3, retry_wait=1.0):
        self.img_size = img_size
        self.retries = retries
        self.retry_wait = retry_wait
        if str(sources).endswith('.txt') and os.path.isfile(sources):  # a list of sources
            with open(sources) as f:
                sources = [x.strip() for x in f.read().splitlines() if x.strip()]
        else:
            sources = [sources]
        self.sources = sources
        n = len(sources)
        self.imgs = [None] * n
        self.alive = [True] * n
        self.threads = []
        for i, s in enumerate(sources):
            cap = self._open(s)
            if cap is None:
                raise SourceError(f'stream {s} could not be opened: check the URL or camera index')
            ok, self.imgs[i] = cap.read()
            if not ok:
                raise SourceError(f'stream {s} opened but gave no frame')
            w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            fps = cap.get(cv2.CAP_PROP_FPS) or 30
            LOGGER.info('%d/%d: %s... success (%dx%d at %.2f FPS)', i + 1, n, s, w, h, fps)
            t = Thread(target=self.update, args=(i, s, cap), daemon=True)
            t.start()
            self.threads.append(t)
        shapes = {letterbox(x, new_shape=self.img_size)[0].shape for x in self.imgs}
        self.rect = len(shapes) == 1
        if not self.rect:
            LOGGER.warning('WARNING: streams differ in shape; for best performance give streams of one shape')

    @staticmethod
    def _open(s):
        cap = cv2.VideoCapture(int(s) if str(s).isnumeric() else s)
        return cap if cap.isOpened() else None

    def update(self, i, source, cap):
        """Reader thread: keep the latest frame of stream i; reopen on drops, give up after retries."""
        failures = 0
        while True:
            ok, frame = cap.read()
            if ok:
                self.imgs[i] = frame
                failures = 0
                time.sleep(0.001)
                continue
            cap.release()
            failures += 1
            if failures > self.retries:
                LOGGER.warning('WARNING: stream %s dropped; %d reconnection attempts failed, it ends here',
                               source, self.retries)
                self.alive[i] = False
                return
            LOGGER.warning('WARNING: stream %s dropped, reconnecting (attempt %d/%d)', source, failures,
                           self.retries)
            time.sleep(self.retry_wait)
            cap = self._open(source) or cv2.VideoCapture()

    def __iter__(self):
        self.count = -1
        return self

    def __next__(self):
        self.count += 1
        if not any(self.alive):
            raise StopIteration
        img0 = [x.copy() for x in self.imgs]
        img = [letterbox(x, new_shape=self.img_size, auto=self.rect)[0] for x in img0]
        return self.sources, to_chw_rgb(np.stack(img, 0)), img0, None

    def __len__(self):
        return 0
