"""Build the Mish CUDA extension ahead of time: python -m models.mish_cuda.build (exit 1 if it fails)."""
import logging
import sys

from models.mish_cuda import build_dir, load_extension

if __name__ == '__main__':
    logging.basicConfig(format='%(message)s', level=logging.INFO)
    ext = load_extension(verbose=True, require_gpu=False)
    print(f'Mish CUDA extension {"built in " + build_dir() if ext else "NOT built"}')
    sys.exit(0 if ext else 1)
