"""INT8 post-training quantization of an exported ONNX model, calibrated on images of a data yaml.

    quantize_onnx('best.onnx', 'best-int8.onnx', CalibrationImages.sample('data/coco.yaml', (640, 640), 100), meta)

ONNX Runtime's static quantization writes a QDQ model (QuantizeLinear/DequantizeLinear around each conv but the
head's: int8 weights per output channel, uint8 activations with min/max ranges from the calibration images).
ONNX Runtime and OpenVINO both run QDQ models with int8 kernels (VNNI or AVX2). Images are letterboxed as
test.py and detect.py feed a static export (models/backends.py), so the ranges are the ones inference sees.
"""
import logging
from pathlib import Path

from models.backends import add_onnx_metadata
from utils.errors import ArgumentError

LOGGER = logging.getLogger(__name__)


def head_convs(proto):
    """The names of the convs whose outputs the head reshapes into predictions (Detect's, and those before darknet's
    [yolo] layers). They stay in float: their outputs are the boxes, and 8 bits of them move a box by pixels."""
    reshaped = {i for node in proto.graph.node if node.op_type == 'Reshape' for i in node.input[:1]}
    return [node.name for node in proto.graph.node if node.op_type == 'Conv' and node.output[0] in reshaped]


def quantize_onnx(src, dst, calibration, meta):
    """Write dst, the INT8 (QDQ) model of ONNX file src calibrated on `calibration` (utils.calibration's
    CalibrationImages: the letterboxed images as batches); returns dst."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ArgumentError('--int8 needs onnxruntime (its quantization tools): pip install onnxruntime (or pip '
                            'install -r requirements-test.txt)') from None
    import onnx
    batch = onnx.load(str(src)).graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = calibration.batches(batch)

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {'images': x}

    pre = Path(dst).with_suffix('.pre.onnx')
    try:
        quant_pre_process(str(src), str(pre))  # shape inference and graph optimisation, as ORT advises
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        # 7-bit weights: ONNX Runtime's u8s8 kernels on x86 CPUs without VNNI (AVX2) saturate
                        # 8-bit ones (its documented remedy); the quick start's detections kept fell to 7%
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, reduce_range=True,
                        op_types_to_quantize=['Conv'],  # convs only: OpenVINO 2026.4 crashes on QDQ batch norms
                        nodes_to_exclude=head_convs(onnx.load(str(pre))))
    finally:
        pre.unlink(missing_ok=True)
    add_onnx_metadata(onnx, dst, meta)
    LOGGER.info('INT8 export success (calibrated on %s), saved as %s', calibration, dst)
    return Path(dst)
