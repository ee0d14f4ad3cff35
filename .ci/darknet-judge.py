"""The independent judge for models/darknet.py: OpenCV 4.x's darknet importer (cv2.dnn.readNetFromDarknet; OpenCV 5
removed it) runs a .cfg/.weights pair on an input blob and saves every yolo layer's output.

    python .ci/darknet-judge.py CFG WEIGHTS INPUT.npy OUTPUT.npz

It needs only numpy and opencv-python-headless<5, in an environment of its own (the project's requirements install
OpenCV 5); tests/darknet_fixtures.py creates one and regenerates tests/data/darknet/ with it.
"""
import sys

import cv2
import numpy as np


def main(cfg, weights, blob, out):
    net = cv2.dnn.readNetFromDarknet(cfg, weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.setInput(np.load(blob).astype(np.float32))
    names = net.getUnconnectedOutLayersNames()
    outputs = net.forward(names)
    np.savez_compressed(out, **{f'yolo{i}': o for i, o in enumerate(outputs)}, opencv=cv2.__version__)


if __name__ == '__main__':
    main(*sys.argv[1:5])
