"""Predict classes with an ONNX model in OpenVINO (CPU) or ONNX Runtime; same printout and JSON as infer.py.

python infer_onnx.py IMAGE_OR_FOLDER -c/--onnx_path ONNX --output OUT.json [-m/--device_target auto|CPU|GPU]
                     [--backend auto|onnxruntime|openvino] [--precision auto|fp32|bf16] [--threads N]
"""
from pathlib import Path

from src.config import make_config
from src.tools.base.cli import OneLineParser, user_entry_point
from src.tools.base.files import check_outputs_apart, check_writable_file
from src.tools.deployment.backends import add_onnx_arguments, announce, load_onnx_engine, onnx_device
from src.tools.deployment.prediction import list_inputs, run_inference


def parse_args(argv=None):
    parser = OneLineParser(description='Predict the class of an image or of every image of a folder with '
                                       'an ONNX model; writes {path: class} JSON.')
    parser.add_argument('dataset_path', metavar='IMAGE_OR_FOLDER', type=Path,
                        help='an image, or a folder whose .png/.jpg/.jpeg files are predicted')
    add_onnx_arguments(parser, default_precision='auto')
    parser.add_argument('-o', '--output', type=Path, default=Path('predictions.json'), help='JSON file to write')
    parser.add_argument('-b', '--batch_size', type=int, default=32, help='images per batch')
    parser.add_argument('--interpolation', choices=('bilinear', 'bicubic'), default=None,
                        help="resize interpolation (default: the model's, else bilinear)")
    parser.add_argument('--with_index', action='store_true',
                        help="each prediction as {'class': name, 'index': i} instead of the class name alone")
    return parser.parse_args(argv)


@user_entry_point
def main(argv=None):
    args = parse_args(argv)
    check_outputs_apart({'--output': args.output},
                        {'--onnx_path': args.onnx_path, 'dataset_path': args.dataset_path})
    check_writable_file(args.output, 'output', 'predictions.json')
    inputs = list_inputs(args.dataset_path)
    args.device_target = onnx_device(args.device_target, args.backend)
    given = {key: getattr(args, key) for key in ('image_size', 'interpolation') if getattr(args, key) is not None}
    predictor = load_onnx_engine(args, make_config(**given))  # preprocessing: the model's (its metadata)
    announce(predictor, args.device_target)
    run_inference(predictor, inputs, args.output, args.with_index, model=args.onnx_path)


if __name__ == '__main__':
    main()
