"""Evaluate an ONNX model (fp32 or INT8) in OpenVINO on CPU or ONNX Runtime: Top1-Acc, Top5-Acc.

python eval_onnx.py DATASET -c/--onnx_path ONNX [--image_size S] [-m/--device_target auto|CPU|GPU] [--prefetch N]
                    [--backend auto|onnxruntime|openvino] [--precision auto|fp32|bf16] [--threads N]
"""
from pathlib import Path

from src.config import make_config
from src.tools.base.cli import OneLineParser, at_least, user_entry_point
from src.tools.base.files import check_outputs_apart
from src.tools.deployment.backends import add_onnx_arguments, announce, load_onnx_engine, onnx_device
from src.tools.deployment.evaluation import evaluate_folder, format_results, validation_folder


def parse_args(argv=None):
    parser = OneLineParser(description='Evaluate an ONNX model (export.py --file_format ONNX) on a folder '
                                       'of class folders, in OpenVINO (CPU) or ONNX Runtime.')
    parser.add_argument('dataset_path', metavar='DATASET', type=Path,
                        help='validation folder, one sub-folder per class')
    add_onnx_arguments(parser, default_precision='fp32')
    parser.add_argument('--prefetch', type=at_least(1), default=16,
                        help='accepted as in the reference; no effect: the images of two batches are read ahead')
    parser.add_argument('-b', '--batch_size', type=at_least(1), default=32, help='images per batch')
    parser.add_argument('-j', '--num_parallel_workers', type=at_least(1), default=4,
                        help='threads reading the images (at most one per CPU)')
    parser.add_argument('--report_dir', type=Path, default=None,
                        help='also write per_class_top1.csv and confusion_matrix.png there')
    return parser.parse_args(argv)


@user_entry_point
def main(argv=None):
    args = parse_args(argv)
    folder = validation_folder(args.dataset_path)
    check_outputs_apart({'--report_dir': args.report_dir}, {'--onnx_path': args.onnx_path, 'validation folder': folder})
    args.device_target = onnx_device(args.device_target, args.backend)
    given = {'image_size': args.image_size} if args.image_size else {}
    predictor = load_onnx_engine(args, make_config(**given))  # preprocessing: the model's (its metadata)
    announce(predictor, args.device_target)
    print(format_results(evaluate_folder(predictor, folder, workers=args.num_parallel_workers, with_loss=False,
                                         report_dir=args.report_dir, model=args.onnx_path)))
    print('=> eval success')


if __name__ == '__main__':
    main()
