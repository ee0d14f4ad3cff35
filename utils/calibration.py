"""Calibration images for INT8 quantization: a seeded sample of a data yaml's training images, letterboxed as
test.py and detect.py feed a static export (models.quantize calibrates on them)."""
import logging
import random

import cv2
import numpy as np

from utils.augmentations import letterbox
from utils.data_config import load_data_config
from utils.datasets import list_image_files
from utils.sources import to_chw_rgb

LOGGER = logging.getLogger(__name__)


class CalibrationImages:
    """Image files and the size (h, w) they are letterboxed to; batches(n) gives float32 NCHW batches in [0, 1]."""

    def __init__(self, files, img_size, source=''):
        self.files, self.img_size, self.source = list(files), tuple(img_size), source

    @classmethod
    def sample(cls, data, img_size, n, seed=0):
        return cls(calibration_files(data, n, seed), img_size, data)

    def batches(self, batch_size=1):
        return calibration_batches(self.files, self.img_size, batch_size)

    def __str__(self):
        return f'{len(self.files)} images of {self.source}'


def calibration_files(data, n, seed=0):
    """Up to n training images of data yaml `data` (a seeded sample)."""
    cfg = load_data_config(data, required=('train',), existing=('train',))
    files = list_image_files(cfg['train'])
    return random.Random(seed).sample(files, min(n, len(files)))


def calibration_batches(files, img_size, batch_size=1):
    """The images letterboxed to img_size (h, w), as float32 batches in [0, 1]."""
    batch = []
    for f in files:
        img = cv2.imread(str(f))
        if img is None:
            LOGGER.warning('calibration: %s is not a readable image, skipped', f)
            continue
        batch.append(to_chw_rgb(letterbox(img, new_shape=tuple(img_size), auto=False)[0]).astype(np.float32) / 255)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:  # a static batch size is filled with copies
        yield np.stack(batch + batch[:1] * (batch_size - len(batch)))
