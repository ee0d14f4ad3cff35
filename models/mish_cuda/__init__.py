"""The Mish CUDA extension: built on first use with torch.utils.cpp_extension into a cached folder.

`load_extension()` returns the compiled module, or None when it cannot be built here (no CUDA, no compiler,
a failed build); a failed build is logged once and not retried in this process. Build ahead of time (the
Dockerfile does) with:

    python -m models.mish_cuda.build
"""
import logging
import os
from pathlib import Path

LOGGER = logging.getLogger(__name__)
SOURCES = [str(Path(__file__).with_name('mish.cpp')), str(Path(__file__).with_name('mish_kernel.cu'))]
_STATE = {'tried': False, 'module': None}


def build_dir():
    """Where the compiled extension is cached: $YOLO_MISH_BUILD_DIR, else ~/.cache/scaled-yolov4/mish_cuda."""
    d = os.environ.get('YOLO_MISH_BUILD_DIR') or str(Path.home() / '.cache' / 'scaled-yolov4' / 'mish_cuda')
    Path(d).mkdir(parents=True, exist_ok=True)
    return d


def load_extension(verbose=False, require_gpu=True):
    """The compiled extension module, building it if needed; None (logged once) if that is not possible.

    require_gpu=False builds without a visible GPU (ahead of time, e.g. in `docker build`; set
    TORCH_CUDA_ARCH_LIST then).
    """
    if _STATE['tried']:
        return _STATE['module']
    _STATE['tried'] = True
    try:
        import torch
        if require_gpu and not torch.cuda.is_available():
            raise RuntimeError('CUDA is not available')
        from torch.utils.cpp_extension import load
        _STATE['module'] = load(name='yolo_mish_cuda', sources=SOURCES, build_directory=build_dir(),
                                extra_cuda_cflags=['-O3'],  # no fast-math: values must match PyTorch's
                                verbose=verbose)
    except (ImportError, OSError, RuntimeError, ValueError, SystemExit) as e:  # compiler or toolkit missing
        LOGGER.warning('Mish CUDA extension unavailable (%s: %s); using PyTorch\'s mish', type(e).__name__,
                       str(e).strip().splitlines()[-1][:160] if str(e).strip() else '')
        _STATE['module'] = None
    return _STATE['module']
