"""The checkpoints released with the paper, and a download that never leaves a partial or wrong file behind.

`--weights yolov4-p5.pt` (or any name in RELEASES) that is not on disk is downloaded into weights/. The file
is written to `<name>.part` beside its destination (a later attempt resumes it when the server supports
ranges, else starts over), checked against the announced length, checked by the caller (it must load with
the safe checkpoint loader), and only then renamed into place.

YOLO_WEIGHTS_MIRROR=URL takes the files from URL/<name> instead of the original host (a cluster without
internet access, or a local copy).
"""
import http.client
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from utils.errors import UserError
from utils.progress import progress

LOGGER = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = ROOT / 'weights'
RELEASE_PAGE = 'https://github.com/WongKinYiu/ScaledYOLOv4/tree/yolov4-large#pretrained-models'
# Google Drive file ids of the release, as linked from the published README's "Pretrained models" table.
RELEASES = {
    'yolov4-p5.pt': '1aXZZE999sHMP1gev60XhNChtHPRMH3Fz',
    'yolov4-p5_.pt': '1NiLQh6dcQ3Z5vRvpWjQLy2DxP4JOEzrc',
    'yolov4-p6.pt': '1aB7May8oPYzBqbgwYSZHuATPXyxh9xnf',
    'yolov4-p6_.pt': '1Q2tzaasWq8EQMi0JTCW2wkQoa2a7AF_l',
    'yolov4-p7.pt': '18fGlzgEJTkUEiBG4hW00pyedJKNnYLP3',
}
# Darknet's own releases of the Scaled-YOLOv4 family (run with models/darknet.py and the cfg of the same name).
DARKNET_RELEASES = {name: f'https://github.com/AlexeyAB/darknet/releases/download/darknet_yolo_v4_pre/{name}'
                    for name in ('yolov4-tiny.weights', 'yolov4-csp.weights', 'yolov4-p5.weights',
                                 'yolov4-p6.weights')}
CHUNK = 1 << 20


class DownloadError(UserError, OSError):
    """A release that could not be fetched or is not what it should be; the message says what to do."""


def release_url(name):
    """Where `name` is downloaded from: $YOLO_WEIGHTS_MIRROR/<name>, else darknet's release or the Google Drive
    file of the paper's."""
    mirror = os.environ.get('YOLO_WEIGHTS_MIRROR')
    if mirror:
        return f'{mirror.rstrip("/")}/{name}'
    if name in DARKNET_RELEASES:
        return DARKNET_RELEASES[name]
    return f'https://drive.usercontent.google.com/download?id={RELEASES[name]}&export=download&confirm=t'


def manual_link(name):
    """Where a user can fetch `name` by hand: the release page (and the file it links)."""
    if name in DARKNET_RELEASES:
        return DARKNET_RELEASES[name]
    return f'{RELEASE_PAGE} (Google Drive file {RELEASES[name]})'


def release_destination(path):
    """Where a release name given as `path` lives: the path itself when it names a folder, else weights/<name>
    (or ./<name> when that file exists)."""
    path = Path(path)
    if path.parent != Path('.') or path.is_file():
        return path
    return WEIGHTS_DIR / path.name


def _fetch(url, part, timeout):
    """Append the remainder of url to `part` (resuming when the server allows); returns the expected size."""
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={'Range': f'bytes={done}-'} if done else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if done and response.status != 206:  # no ranges: a clean retry from the start
            done = 0
        length = response.headers.get('Content-Length')
        total = done + int(length) if length is not None else None
        with open(part, 'ab' if done else 'wb') as f, progress(total=total, initial=done, unit='B', unit_scale=True,
                                                                 unit_divisor=1024, desc=part.name[:-5]) as bar:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
    return total


def download_release(name, dst, validate, timeout=60):
    """Download release `name` to dst; validate(path) must raise for a file that is not a plausible checkpoint.

    Raises DownloadError (one line: what failed, the link to fetch by hand, where to put the file).
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + '.part')
    url = release_url(name)
    hint = f'fetch it by hand from {manual_link(name)} and put it at {dst}'
    LOGGER.info('Downloading %s from %s to %s', name, url, dst)
    try:
        total = _fetch(url, part, timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:  # offline, refused, cut
        reason = getattr(e, 'reason', None) or e
        raise DownloadError(f'{name} is not on disk and its download from {url} failed ({reason}): {hint}') from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f'{name}: the download stopped at {size} of {total} bytes ({part} is kept and resumed '
                            f'next time): try again, or {hint}')
    try:
        validate(part)
    except (UserError, ValueError, OSError, RuntimeError) as e:  # not a usable checkpoint: never installed
        part.unlink(missing_ok=True)
        cause = ' '.join(str(e).replace(str(part), part.name).split())  # the full path is in the hint already
        cause = cause if len(cause) <= 400 else cause[:399] + '…'
        raise DownloadError(f'{name}: the downloaded file is not a usable checkpoint ({cause}): {hint}') from None
    os.replace(part, dst)
    LOGGER.info('%s saved (%.1f MB)', dst, dst.stat().st_size / 1E6)
    return dst
