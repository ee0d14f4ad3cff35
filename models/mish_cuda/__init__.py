"""The Mish CUDA extension: built on first use with torch.utils.cpp_extension into a cached folder.

`load_extension()` returns the compiled module, or None when it cannot be built here (no CUDA, no compiler,
a failed build); a failed build is logged once and not retried in this process. Build ahead of time (the
Dockerfile does) with:

    python -m models.mish_cuda.build
"""
import logging
import os
import re
import shutil
import sys
from pathlib import Path

LOGGER = logging.getLogger(__name__)
SOURCES = [str(Path(__file__).with_name('mish.cpp')), str(Path(__file__).with_name('mish_kernel.cu'))]
_STATE = {'tried': False, 'module': None}


def build_dir():
    """Where the compiled extension is cached: $YOLO_MISH_BUILD_DIR, else ~/.cache/scaled-yolov4/mish_cuda."""
    d = os.environ.get('YOLO_MISH_BUILD_DIR') or str(Path.home() / '.cache' / 'scaled-yolov4' / 'mish_cuda')
    Path(d).mkdir(parents=True, exist_ok=True)
    return d


def find_cuda_home(nvcc=None, search=('/usr/local/cuda', '/usr/local/cuda-*', '/opt/cuda')):
    """The CUDA toolkit to build with when neither CUDA_HOME nor CUDA_PATH is set, or None to leave it to PyTorch.

    PyTorch takes the folder above the `nvcc` on PATH; a wrapper script (e.g. /usr/local/bin/nvcc calling
    /usr/local/cuda-X/bin/nvcc) then points it at a folder without headers or libcudart and the link fails.
    This returns the first folder that has `include/cuda_runtime.h`: the resolved nvcc's, then `search`
    (newest version first where a pattern matches several).
    """
    if os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH'):
        return None
    nvcc = nvcc or shutil.which('nvcc')
    candidates = [Path(nvcc).resolve().parent.parent] if nvcc else []
    for pattern in search:
        matches = sorted(Path(pattern).parent.glob(Path(pattern).name),
                         key=lambda p: [int(v) for v in re.findall(r'\d+', p.name)], reverse=True)
        candidates += matches
    return next((str(c) for c in candidates if (c / 'include' / 'cuda_runtime.h').is_file()), None)


def _use_toolkit(found):
    """Build with `found` (or the user's CUDA_HOME/CUDA_PATH), also where torch.utils.cpp_extension was
    imported earlier (torch.compile does) and read its CUDA_HOME then."""
    if found:
        os.environ['CUDA_HOME'] = found
    home = os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH')
    cpp_extension = sys.modules.get('torch.utils.cpp_extension')
    if home and cpp_extension is not None and cpp_extension.CUDA_HOME != home:
        cpp_extension.CUDA_HOME = home


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
        _use_toolkit(find_cuda_home())
        from torch.utils.cpp_extension import load
        _STATE['module'] = load(name='yolo_mish_cuda', sources=SOURCES, build_directory=build_dir(),
                                extra_cuda_cflags=['-O3'],  # no fast-math: values must match PyTorch's
                                verbose=verbose)
    except (ImportError, OSError, RuntimeError, ValueError, SystemExit) as e:  # compiler or toolkit missing
        LOGGER.warning('Mish CUDA extension unavailable (%s: %s); using PyTorch\'s mish', type(e).__name__,
                       str(e).strip().splitlines()[-1][:160] if str(e).strip() else '')
        _STATE['module'] = None
    return _STATE['module']
