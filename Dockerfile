# Scaled-YOLOv4 on a CUDA PyTorch base image.
#   docker build -t scaled-yolov4 .
#   docker run --gpus all --shm-size 16g -v /path/to/coco:/coco -it scaled-yolov4
# data/coco.yaml reads ../coco from /yolo, i.e. the COCO volume mounted at /coco.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1
# OpenCV's runtime libraries; versions follow the base image's distribution (not pinned on purpose).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /yolo
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . /yolo
# Build the Mish CUDA extension now (no GPU is visible during docker build, so name the architectures).
# YOLO_MISH=auto uses it for CUDA tensors; the default (native) uses PyTorch's own mish.
ENV TORCH_CUDA_ARCH_LIST="7.0;7.5;8.0;8.6;8.9;9.0+PTX" YOLO_MISH_BUILD_DIR=/yolo/.mish_build
RUN python -m models.mish_cuda.build

CMD ["bash"]
