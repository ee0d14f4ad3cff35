"""Training/evaluation dataset and dataloader (docs/architecture.md, "Data").

Items are exactly the published ones: (uint8 CHW RGB tensor, labels (n, 6) [image_index, class, x, y, w, h]
normalised, path, shapes), with `collate_fn` filling the image index. Inference sources (images, videos,
streams, webcams) live in `utils.sources` and are re-exported here under their published names.
"""
import atexit
import contextlib
import logging
import multiprocessing
import os
import random
import signal
import sys
import traceback
import weakref
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, distributed

from utils.cache_check import check_image_cache, resized_hw
from utils.augmentations import augment_hsv, letterbox, mixup, mosaic_placement, random_perspective, xywhn2xyxy
from utils.errors import UserError
from utils.boxes import xyxy2xywh
from utils.label_cache import IMG_FORMATS, cached_scan, img2label_paths
from utils.label_formats import label_source, scan_labels, split_arrays
from utils.packed import PackedImages, PackedStrings
from utils.sampling import EpochSampler, SampleKey, seed_sample
from utils.sources import LoadImages, LoadStreams, list_files, to_chw_rgb  # noqa: F401  (published import location)
from utils.torch_utils import torch_distributed_zero_first

__all__ = ['LoadImagesAndLabels', 'create_dataloader', 'check_label_classes', 'letterbox', 'LoadImages', 'LoadStreams',
           'img2label_paths', 'DatasetError']

LOGGER = logging.getLogger(__name__)
cv2.setNumThreads(0)  # OpenCV's own threads fight the dataloader workers


class DatasetError(UserError, FileNotFoundError):
    """A dataset path or list that yields no usable images; the message names it."""


def check_label_classes(dataset, nc):
    """Every label class must be < nc: raise DatasetError naming the files and ids that are not."""
    bad = [(f, int(c)) for f, lb in zip(dataset.label_files, dataset.labels) for c in np.unique(lb[:, 0]) if c >= nc]
    if bad:
        listing = '; '.join(f'{f}: class {c}' for f, c in bad[:10])
        raise DatasetError(f'label class id out of range for nc={nc} (possible classes 0-{nc - 1}): {listing}'
                           + (f' (and {len(bad) - 10} more)' if len(bad) > 10 else '')
                           + ': fix the labels, or set nc (and names) in the data yaml to cover them')


def list_image_files(path):
    """Image paths from a folder, a .txt list (relative paths resolved against the list's folder), a glob,
    or a list of those; sorted as published."""
    files = list_files(path, IMG_FORMATS, error=DatasetError)
    if not files:
        raise DatasetError(f'no images found in {path} (formats: {", ".join(IMG_FORMATS)})')
    return files


class LoadImagesAndLabels(Dataset):
    """Images and YOLO labels with the published augmentations, rectangular batches and caching.

    cache_images: False, True/'ram' (decoded, resized images in memory) or 'disk' (decoded, resized arrays
    saved next to the images as <name>.<size><a|l>.npy, refreshed when the image is newer; for datasets
    larger than RAM).
    """

    def __init__(self, path, img_size=640, batch_size=16, augment=False, hyp=None, rect=False,
                 image_weights=False, cache_images=False, single_cls=False, stride=32, pad=0.0, rank=-1,
                 prefix='', seed=0):
        self.img_size = img_size
        self.augment = augment
        self.rank = rank  # under DDP every training process holds its own image cache
        self.hyp = hyp
        self.seed = seed  # a SampleKey's augmentation is seeded from (seed, epoch, index)
        self.image_weights = image_weights
        self.rect = False if image_weights else rect
        # load 4 images at a time into a mosaic (training); a hyp file may turn it off with mosaic: 0
        self.mosaic = self.augment and not self.rect and bool((hyp or {}).get('mosaic', 1))
        self.mosaic_border = [-img_size // 2, -img_size // 2]
        self.stride = stride
        if augment and hyp is None:
            raise ValueError('augment=True needs the hyperparameters (hyp) for the augmentations')

        scan = self._scan(path, prefix, rank)
        if not scan['files']:
            raise DatasetError(f'{prefix}no usable images in {path}: every image was left out (see warnings)')
        # per-image data in flat arrays, not a Python object per image: loader workers read them without copying
        # pages (utils/packed.py)
        self.img_files = PackedStrings.pack(scan['files'])
        self.label_files = PackedStrings.pack(scan.get('label_files') or img2label_paths(scan['files']))
        self.labels = scan['labels']  # RaggedArrays
        self.shapes = np.asarray(scan['shapes'], dtype=np.float64)  # (w, h) of each image
        if single_cls:
            self.labels.data[:, 0] = 0

        n = len(self.img_files)
        bi = np.floor(np.arange(n) / batch_size).astype(int)  # batch index of each image
        nb = bi[-1] + 1
        self.batch = bi
        self.n = n
        self.indices = range(n)

        if self.rect:  # rectangular batches: images sorted by aspect ratio
            s = self.shapes
            ar = s[:, 1] / s[:, 0]  # h / w
            irect = ar.argsort()
            self.img_files = self.img_files.take(irect)
            self.label_files = self.label_files.take(irect)
            self.image_ids = None if self.image_ids is None else self.image_ids[irect]
            self.labels = self.labels.take(irect)
            self.shapes = s[irect]
            ar = ar[irect]
            shapes = [[1, 1]] * nb
            for i in range(nb):
                ari = ar[bi == i]
                mini, maxi = ari.min(), ari.max()
                if maxi < 1:
                    shapes[i] = [maxi, 1]
                elif mini > 1:
                    shapes[i] = [1, 1 / mini]
            self.batch_shapes = np.ceil(np.array(shapes) * img_size / stride + pad).astype(int) * stride

        self.imgs = PackedImages(resized_hw(self.shapes, img_size))  # RAM cache: stored by _cache_images
        # disk cache: one array per image, size and interpolation (AREA when shrinking for evaluation)
        self.npy_tag = f'{img_size}{"l" if augment else "a"}' if cache_images == 'disk' else None
        if cache_images:
            self._cache_images('disk' if cache_images == 'disk' else 'ram', prefix)

    def _scan(self, path, prefix, rank):
        """The label scan of YOLO labels, or of a COCO JSON or VOC XML named in their place (utils/label_formats:
        then image_ids holds each image's id and label_source its format, path and class -> category mapping)."""
        self.image_ids, self.label_source = None, None
        kind = label_source(path)
        if kind is None:
            all_files = list_image_files(path)
            all_labels = img2label_paths(all_files)
            cache_path = Path(all_labels[0]).parent.with_suffix('.cache')
            return cached_scan(all_files, all_labels, cache_path, prefix, write=rank in (-1, 0))
        scan = scan_labels(path, prefix, write=rank in (-1, 0))
        self.image_ids, scan['label_files'] = split_arrays(scan, path)
        self.label_source = dict(scan['extra'], kind=kind, path=path)
        return scan

    def npy_file(self, index):
        """The disk cache's file of image `index`, or None without a disk cache."""
        return Path(self.img_files[index]).with_suffix(f'.{self.npy_tag}.npy') if self.npy_tag else None

    def _cache_images(self, mode, prefix):
        from utils.progress import progress
        npy_files = [self.npy_file(i) for i in range(self.n)] if mode == 'disk' else None
        check_image_cache(mode, self.shapes, self.img_size, self.rank, npy_files, prefix)
        pbar = progress(range(self.n), desc=f'{prefix}Caching images ({mode})', leave=False)
        if mode == 'ram':
            gb = sum(self._cache_in_ram(i) for i in pbar)
        else:
            gb = sum(self._cache_on_disk(i, npy, prefix) for i, npy in zip(pbar, npy_files))
        if self.npy_tag or mode == 'ram':
            LOGGER.info('%sCached %d images (%.2f GB, %s)', prefix, self.n, gb / 1e9, mode)

    def _cache_in_ram(self, i):
        """Bytes of image i, decoded, resized and stored in the RAM cache at the place its scanned size gives."""
        img = self._read_resized(i)[0]
        if img.shape[:2] != tuple(self.imgs.hw[i]):
            (h, w), (h1, w1) = img.shape[:2], self.imgs.hw[i]
            raise DatasetError(f'{self.img_files[i]} is {w}x{h} at --img {self.img_size} as OpenCV decodes it, but '
                               f'{w1}x{h1} by the size the scan read (PIL, with its EXIF orientation): save the image '
                               f'again without EXIF orientation, or train without --cache-images ram')
        self.imgs.store(i, img)
        return img.nbytes

    def _cache_on_disk(self, i, npy, prefix):
        """Bytes of image i's .npy file, written if missing or older than the image. A file that cannot be
        written (a read-only dataset) turns the disk cache off with a warning: images are read from their files."""
        if not self.npy_tag:
            return 0
        if not npy.exists() or npy.stat().st_mtime < os.stat(self.img_files[i]).st_mtime:
            tmp = npy.with_suffix(f'.{os.getpid()}.tmp.npy')
            try:
                np.save(tmp, self._read_resized(i)[0])
                os.replace(tmp, npy)
            except OSError as e:
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
                LOGGER.warning('%sWARNING: disk image cache not written (%s: %s): images are read from their files '
                               'instead', prefix, tmp, e.strerror or e)
                self.npy_tag = None
                return 0
        return npy.stat().st_size

    def __len__(self):
        return len(self.img_files)

    def _read_resized(self, index):
        """Decode image `index` and resize so its longer side is img_size (INTER_AREA when shrinking for
        evaluation, else linear). Returns (BGR image, original (h, w), resized (h, w))."""
        path = self.img_files[index]
        img = cv2.imread(path)
        if img is None:
            raise DatasetError(f'image {path} could not be read (it was readable when the dataset was scanned)')
        h0, w0 = img.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_AREA if r < 1 and not self.augment else cv2.INTER_LINEAR
            img = cv2.resize(img, (int(w0 * r), int(h0 * r)), interpolation=interp)
        return img, (h0, w0), img.shape[:2]

    def load_image(self, index):
        """(BGR image, original (h, w), resized (h, w)), from the RAM or disk cache when there is one."""
        w0, h0 = self.shapes[index]
        img = self.imgs[index]
        if img is None and self.npy_tag:
            img = np.load(self.npy_file(index), allow_pickle=False)
        if img is not None:
            return img, (int(h0), int(w0)), img.shape[:2]
        return self._read_resized(index)

    def __getitem__(self, index):
        """Item `index` (int), or a training loader's SampleKey: its image, augmented with random numbers
        seeded from (seed, epoch, position), whichever worker loads it."""
        if isinstance(index, SampleKey):
            seed_sample(self.seed, index.epoch, index.index)
            index = index.image
        else:
            index = self.indices[index]  # linear, or drawn by image weights
        hyp = self.hyp
        if self.mosaic:
            img, labels = self.load_mosaic(index)
            shapes = None
            if random.random() < hyp['mixup']:
                img, labels = mixup(img, labels, *self.load_mosaic(random.randint(0, self.n - 1)))
        else:
            img, (h0, w0), (h, w) = self.load_image(index)
            shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            shapes = (h0, w0), ((h / h0, w / w0), pad)  # for COCO mAP rescaling
            x = self.labels[index]
            labels = xywhn2xyxy(x, ratio[0] * w, ratio[1] * h, pad[0], pad[1]) if x.size else x.copy()
            if self.augment:
                img, labels = random_perspective(img, labels, degrees=hyp['degrees'], translate=hyp['translate'],
                                                 scale=hyp['scale'], shear=hyp['shear'],
                                                 perspective=hyp['perspective'])
        if self.augment:
            augment_hsv(img, hgain=hyp['hsv_h'], sgain=hyp['hsv_s'], vgain=hyp['hsv_v'])

        nl = len(labels)
        if nl:
            labels[:, 1:5] = xyxy2xywh(labels[:, 1:5])
            labels[:, [2, 4]] /= img.shape[0]
            labels[:, [1, 3]] /= img.shape[1]
        if self.augment:
            if random.random() < hyp['flipud']:
                img = np.flipud(img)
                if nl:
                    labels[:, 2] = 1 - labels[:, 2]
            if random.random() < hyp['fliplr']:
                img = np.fliplr(img)
                if nl:
                    labels[:, 1] = 1 - labels[:, 1]

        labels_out = torch.zeros((nl, 6))
        if nl:
            labels_out[:, 1:] = torch.from_numpy(labels)
        img = to_chw_rgb(img)
        return torch.from_numpy(img), labels_out, self.img_files[index], shapes

    def load_mosaic(self, index):
        """The indexed image and 3 random ones on a 2s x 2s canvas centred at (s, s) (published), labels
        clipped to the canvas, then random_perspective with border -s/2 to an s x s image."""
        s = self.img_size
        xc = yc = s
        indices = [index] + [random.randint(0, self.n - 1) for _ in range(3)]
        img4 = np.full((s * 2, s * 2, 3), 114, dtype=np.uint8)
        labels4 = []
        for k, i in enumerate(indices):  # one decoded image held at a time (measurably faster than four)
            img, _, (h, w) = self.load_image(i)
            (x1a, y1a, x2a, y2a), (x1b, y1b, x2b, y2b) = mosaic_placement(k, s, xc, yc, h, w)
            img4[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            x = self.labels[i]
            labels4.append(xywhn2xyxy(x, w, h, x1a - x1b, y1a - y1b) if x.size else x.copy())
        labels4 = np.concatenate(labels4, 0)
        np.clip(labels4[:, 1:], 0, 2 * s, out=labels4[:, 1:])
        hyp = self.hyp
        return random_perspective(img4, labels4, degrees=hyp['degrees'], translate=hyp['translate'],
                                  scale=hyp['scale'], shear=hyp['shear'], perspective=hyp['perspective'],
                                  border=self.mosaic_border)

    @staticmethod
    def collate_fn(batch):
        img, label, path, shapes = zip(*batch)
        for i, lb in enumerate(label):
            lb[:, 0] = i  # target image index for build_targets()
        return torch.stack(img, 0), torch.cat(label, 0), path, shapes


def seed_worker(worker_id):
    """Seed numpy and random in each dataloader worker from its torch seed, and leave SIGINT, SIGTERM and
    SIGUSR1 to the training process: a scheduler or Ctrl+C signals the whole process group, and the workers
    must keep serving batches until the training process has reached a batch boundary and saved."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(s, signal.SIG_IGN)
    sys.excepthook = quiet_broken_handoff


def quiet_broken_handoff(exc_type, exc, tb):
    """sys.excepthook of a loader worker. A worker hands batches to the training process through
    multiprocessing's resource sharer, whose server thread prints any error with sys.excepthook. When the
    training process breaks a hand-off off (it is ending the loader after another worker died, and says so in
    one line), that error is not printed; anything else is, as usual."""
    frames = traceback.extract_tb(tb)
    if (frames and Path(frames[0].filename).match('multiprocessing/resource_sharer.py')
            and issubclass(exc_type, (OSError, EOFError, multiprocessing.AuthenticationError))):
        return
    sys.__excepthook__(exc_type, exc, tb)


def create_dataloader(path, imgsz, batch_size, stride, single_cls=False, hyp=None, augment=False, cache=False,
                      pad=0.0, rect=False, rank=-1, world_size=1, workers=8, image_weights=False, prefix='',
                      shuffle=False, seed=0):
    """(DataLoader, dataset). batch_size is per process.

    Training loaders (augment=True) draw their order from an EpochSampler (its set_epoch selects the epoch
    and where in it to start) and seed each sample from (seed, epoch, position): the batches are the same
    for any number of workers and after a resume at any batch. Other loaders read in order, split over the
    ranks under DDP. Workers are capped by the cores per process.
    """
    with torch_distributed_zero_first(rank):  # rank 0 scans and writes the label cache first
        dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect,
                                      cache_images=cache, single_cls=single_cls, stride=int(stride), pad=pad,
                                      image_weights=image_weights, rank=rank, prefix=prefix, seed=seed)
    batch_size = min(batch_size, len(dataset))
    nw = min((os.cpu_count() or 1) // max(world_size, 1), batch_size if batch_size > 1 else 0, workers)
    shuffle = shuffle and not rect and not image_weights
    if augment:
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank,
                               world_size=world_size if rank != -1 else 1)
    else:
        sampler = distributed.DistributedSampler(dataset, shuffle=shuffle, seed=seed) if rank != -1 else None
    generator = torch.Generator()
    generator.manual_seed(seed + max(rank, 0))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, num_workers=nw,
                        sampler=sampler, pin_memory=torch.cuda.is_available(),
                        collate_fn=LoadImagesAndLabels.collate_fn, worker_init_fn=seed_worker,
                        generator=generator, persistent_workers=nw > 0)
    if nw:
        _watch_workers(loader)
    return loader, dataset


_LIVE_LOADERS = weakref.WeakSet()  # loaders with worker processes, ended at exit if their owner did not


def _watch_workers(loader):
    """End `loader`'s workers when the interpreter exits, if nothing ended them before. Its workers ignore
    SIGTERM (seed_worker), so multiprocessing's own exit handler, which terminates and then joins them, would
    wait forever for a loader still alive at exit (one held in an uncollected reference cycle, for instance).
    atexit calls handlers in reverse order of registration: registered after multiprocessing's, this one runs
    first."""
    if not _LIVE_LOADERS:
        atexit.unregister(_stop_live_loaders)
        atexit.register(_stop_live_loaders)
    _LIVE_LOADERS.add(loader)


def _stop_live_loaders():
    stop_loader_workers(*list(_LIVE_LOADERS))


def loader_failure(e):
    """A one-line account of a data-loader worker's failure (killed; an error in it, such as an image gone), or
    None for other errors."""
    text = str(e)
    if isinstance(e, RuntimeError) and text.startswith('DataLoader worker'):
        return ' '.join(text.split('. ')[0].split())  # "DataLoader worker (pid 123) is killed by signal: Killed"
    if 'in DataLoader worker process' in text and 'Original Traceback' in text:
        return [ln for ln in text.splitlines() if ln.strip()][-1].split(': ', 1)[-1]  # the worker's error message
    return None


@contextlib.contextmanager
def workers_stopped(*loaders):
    """A block after which the loaders' worker processes are ended, however it ends (None: nothing to end)."""
    try:
        yield
    finally:
        stop_loader_workers(*[x for x in loaders if x is not None])


def stop_loader_workers(*loaders):
    """End the loaders' worker processes. They ignore SIGTERM (a stop signal is the training process's to
    handle), so multiprocessing's exit handler, which terminates and then joins them, would wait forever."""
    for loader in loaders:
        it = getattr(loader, '_iterator', None)
        if it is None:
            continue
        it._shutdown_workers()  # asks them to stop, waits a little
        for w in getattr(it, '_workers', []):
            if w.is_alive():
                w.kill()
                w.join()
