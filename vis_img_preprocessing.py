"""Draw what the training pipeline does to a few images: originals next to augmented draws.

    python vis_img_preprocessing.py --config src/configs/RepVGG.yaml --data_url DATA \
        [--output preprocessing.png] [--num_images 4] [--num_draws 5]

The configured train transform runs ``num_draws`` times on images of DATA/train (docs/data.md);
batch-level Mixup / CutMix is not drawn.
"""
import sys
from pathlib import Path

from src.config import parse_config
from src.tools.base.cli import OneLineParser, UserError, at_least, user_entry_point
from src.tools.base.files import check_outputs_apart, check_writable_file


def _extra_flags(argv):
    parser = OneLineParser(add_help=False, allow_abbrev=False)
    parser.add_argument('--output', default='preprocessing.png', help='PNG file to write.')
    parser.add_argument('--num_images', type=at_least(1), default=4, help='Images to show (rows).')
    parser.add_argument('--num_draws', type=at_least(1), default=5, help='Augmented draws per image (columns).')
    return parser.parse_known_args(argv)


@user_entry_point
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra, rest = _extra_flags(argv)
    config = parse_config(rest, 'vis_img_preprocessing.py', __doc__.split('\n', 1)[0] + ' Also: --output, '
                          '--num_images, --num_draws.')
    if config.data_url is None:
        raise UserError('pass --data_url with a folder holding train/ (and a --config)')
    check_outputs_apart({'--output': extra.output},
                        {'config': config.config, 'training folder': Path(config.data_url) / 'train'})
    check_writable_file(extra.output, '--output', 'preprocessing.png')
    from src.dataset import train_transform
    from src.tools.training.preview import draw_preprocessing
    output = draw_preprocessing(Path(config.data_url) / 'train', train_transform(config), extra.output, config.seed,
                                extra.num_images, extra.num_draws)
    print(f'=> wrote {output}')


if __name__ == '__main__':
    main()
