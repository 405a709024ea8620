"""Predict the class of an image or of every image of a folder with a checkpoint, MINDIR or ONNX file.

python infer.py --dataset_path IMAGE_OR_FOLDER --pretrained MODEL --pred_output OUT.json [--config C]

The model file says what it is and how its images are preprocessed (src/tools/checkpoints/model_card.py).
"""
from src.config import parse_config
from src.tools.base.cli import user_entry_point
from src.tools.base.files import check_outputs_apart, check_writable_file
from src.tools.deployment.backends import announce, load_predictor
from src.tools.deployment.prediction import list_inputs, run_inference


@user_entry_point
def main(argv=None):
    config = parse_config(argv, 'infer.py', 'Predict classes of an image or a folder of images with a RepVGG '
                                            'checkpoint, MINDIR or ONNX file; writes {path: class} JSON.')
    check_outputs_apart({'pred_output': config.pred_output},
                        {'config': config.config, 'pretrained': config.pretrained, 'dataset_path': config.dataset_path})
    check_writable_file(config.pred_output, 'output', 'predictions.json')
    inputs = list_inputs(config.dataset_path)
    predictor = load_predictor(config, default_precision='auto')
    announce(predictor, config.device_target)
    run_inference(predictor, inputs, config.pred_output, config.with_index, config.num_parallel_workers,
                  model=config.pretrained)


if __name__ == '__main__':
    main()
