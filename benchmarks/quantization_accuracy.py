"""fp32 against INT8 top-1 of RepVGG and QARepVGG trained with the same recipe, on one data set.

    python benchmarks/quantization_accuracy.py                       # the digits demo (built if missing)
    python benchmarks/quantization_accuracy.py --data_url /data/imagenet --epochs 120 --image_size 224

For each arch (default RepVGG-A0 and QARepVGG-A0), through the project's own commands: train.py with
the recipe of ``--config`` (default src/configs/RepVGG-A0_digits.yaml) and only the arch changed,
export.py of the run's last checkpoint to fp32 ONNX and to INT8 ONNX (--quantize int8, calibrated on
``--calibration_images`` images of the training folder), then both files scored on the validation
folder by eval_onnx.py. Prints one row per arch: fp32 top-1, INT8 top-1 and their difference in points.
Every run and file stays under ``--work_dir``. Not a test: it trains, which takes minutes on the demo.
"""
import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.config import make_config
from src.dataset import class_names
from src.tools.base.cli import user_entry_point
from src.tools.checkpoints.saver import CheckpointSaver
from src.tools.deployment.evaluation import parse_results


def run(command, log):
    """Run a project script (python SCRIPT ...) from the repository root; its stdout, appended to ``log``.
    A failure stops the study with the script's last lines."""
    print('$ ' + ' '.join(map(str, command)), flush=True)
    result = subprocess.run([sys.executable, *map(str, command)], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    with log.open('a', encoding='utf-8') as handle:
        handle.write(f'$ {" ".join(map(str, command))}\n{result.stdout}{result.stderr}\n')
    if result.returncode:
        raise SystemExit(f'{command[0]} failed (see {log}):\n' + '\n'.join(result.stderr.splitlines()[-5:]))
    return result.stdout


def last_checkpoint(run_folder, arch):
    """The run's checkpoint of its last step (rank 0): the end of training, not the best epoch."""
    found = CheckpointSaver(run_folder, arch, rank=0, keep_last=1, keep_best=0).periodic()
    return found[max(found)]


def top1(eval_output):
    return parse_results(eval_output)['Top1-Acc']


def study(arch, args, log):
    """(fp32 top-1, INT8 top-1, agreement line) of ``arch`` trained, exported and scored."""
    runs = args.work_dir / 'runs'
    before = set(runs.glob('*')) if runs.exists() else set()
    model = ['--config', args.config, '--arch', arch, '--data_url', args.data, '--num_classes', args.num_classes]
    if args.image_size is not None:
        model += ['--image_size', args.image_size]
    recipe = [f'--{key}={getattr(args, key)}' for key in ('epochs', 'batch_size') if getattr(args, key) is not None]
    if args.data_url is not None:
        recipe += ['--demo_data', 0]  # never build the digits in a user's folder
    run(['train.py', *model, *recipe, '--train_url', runs], log)
    checkpoint = last_checkpoint(next(iter(set(runs.glob('*')) - before)), arch)
    fp32, int8 = args.work_dir / f'{arch}_fp32', args.work_dir / f'{arch}_int8'
    export = ['export.py', *model, '--pretrained', checkpoint, '--file_format', 'ONNX']
    run([*export, '--export_path', fp32], log)
    exported = run([*export, '--export_path', int8, '--quantize', 'int8', '--calibration_path', args.data / 'train',
                    '--calibration_images', args.calibration_images], log)
    agreement = next(line for line in exported.splitlines() if 'top-1 agreement' in line)
    scores = [top1(run(['eval_onnx.py', args.data / 'val', '-c', f'{path}.onnx'], log)) for path in (fp32, int8)]
    return scores[0], scores[1], agreement


@user_entry_point
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', type=Path, default=ROOT / 'src/configs/RepVGG-A0_digits.yaml',
                        help='training recipe (YAML); the archs differ in nothing else')
    parser.add_argument('--data_url', type=Path, default=None,
                        help="ImageNet-style folder with train/ and val/ (default: the config's, the digits demo)")
    parser.add_argument('--archs', nargs='+', default=['RepVGG-A0', 'QARepVGG-A0'])
    parser.add_argument('--epochs', type=int, default=None, help="default: the config's")
    parser.add_argument('--image_size', type=int, default=None, help="default: the config's")
    parser.add_argument('--batch_size', type=int, default=None, help="default: the config's")
    parser.add_argument('--calibration_images', type=int, default=300)
    parser.add_argument('--work_dir', type=Path, default=Path('quantization_study'),
                        help='runs, ONNX files and study.log go here')
    args = parser.parse_args()
    args.config, args.work_dir = args.config.resolve(), args.work_dir.resolve()
    config = make_config(args.config)
    if args.data_url is None:  # the config's folder; the scripts run from the repository root
        args.data = config.data_url if config.data_url.is_absolute() else ROOT / config.data_url
        args.num_classes = config.num_classes
    else:
        args.data = args.data_url.resolve()
        args.num_classes = len(class_names(args.data / 'train'))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    log = args.work_dir / 'study.log'

    rows = [(arch, *study(arch, args, log)) for arch in args.archs]
    print(f'\n# fp32 vs INT8 (export.py --quantize int8) top-1 on {args.data / "val"}')
    print(f'{"arch":<14} {"fp32 top-1":>11} {"INT8 top-1":>11} {"difference":>11}')
    for arch, fp32, int8, _ in rows:
        print(f'{arch:<14} {fp32:>11.2%} {int8:>11.2%} {100 * (int8 - fp32):>+8.2f} pt')
    for arch, _, _, agreement in rows:
        print(f'{arch}: {agreement.removeprefix("=> ")}')


if __name__ == '__main__':
    main()
