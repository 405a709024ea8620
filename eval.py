"""Evaluate a checkpoint (train or deploy form, re-parameterized first), a MINDIR or an ONNX file.

python eval.py --dataset_path VAL_FOLDER --pretrained MODEL [--config C] [--device_target CPU]

The model file says what it is and how its images are preprocessed; a config is needed only for
files written before it did (src/tools/checkpoints/model_card.py).
"""
from src.config import parse_config
from src.tools.base.cli import user_entry_point
from src.tools.base.files import check_outputs_apart
from src.tools.deployment.backends import announce, load_predictor
from src.tools.deployment.evaluation import evaluate_folder, format_results, validation_folder


@user_entry_point
def main(argv=None):
    config = parse_config(argv, 'eval.py', 'Evaluate a RepVGG checkpoint, MINDIR or ONNX file on a folder of class '
                                           'folders: Loss, Top1-Acc, Top5-Acc.')
    folder = validation_folder(config.dataset_path, config.data_url)
    check_outputs_apart({'report_dir': config.report_dir},
                        {'config': config.config, 'pretrained': config.pretrained, 'validation folder': folder})
    predictor = load_predictor(config, default_precision='fp32')
    announce(predictor, config.device_target)
    print(format_results(evaluate_folder(predictor, folder, config.num_parallel_workers, config.image_check,
                                         config.image_check_cache, report_dir=config.report_dir,
                                         model=config.pretrained)))
    print('=> eval success')


if __name__ == '__main__':
    main()
