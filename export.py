"""Export the deploy (re-parameterized) network of a checkpoint to MINDIR or ONNX, fp32, or to ONNX INT8.

python export.py --pretrained CKPT --file_format MINDIR|ONNX|AIR --export_path P [--ema 1] [--config C]
python export.py --pretrained CKPT --file_format ONNX --quantize int8 [--calibration_path DIR]
                 [--calibration_images N] --export_path P

The checkpoint's model card (arch, classes, preprocessing) goes into the file's metadata.
"""
from src.config import parse_config
from src.tools.base.cli import UserError, user_entry_point
from src.tools.base.device import set_device
from src.tools.base.files import check_outputs_apart
from src.tools.deployment.export import check_export_target, export_file_path, export_network
from src.tools.deployment.model_files import load_deploy_network
from src.tools.deployment.quantize import (
    AGREEMENT_THRESHOLD,
    INT8_SCHEME,
    calibration_files,
    calibration_folder,
    export_int8,
    foreign_classes_note,
)


@user_entry_point
def main(argv=None):
    config = parse_config(argv, 'export.py', 'Export a RepVGG checkpoint, re-parameterized to its deploy form, '
                                             'as MINDIR or ONNX (input Nx3xSxS float32), or as INT8 ONNX '
                                             '(--quantize int8).')
    if config.file_format == 'AIR':  # MindSpore writes AIR files only on Ascend, which no device_target is
        raise UserError(f'MindSpore writes AIR files only on Ascend devices and this run targets '
                        f'{config.device_target}: use --file_format MINDIR or ONNX (AIR is for the Ascend toolchain)')
    if config.pretrained is None:
        raise UserError('pass --pretrained with the .ckpt file to export (an untrained network is useless)')
    folder = None
    if config.quantize == 'int8':
        folder = calibration_folder(config.file_format, config.calibration_path, config.data_url)
    check_outputs_apart({'export_path': export_file_path(config.export_path, config.file_format)},
                        {'config': config.config, 'pretrained': config.pretrained, 'calibration folder': folder})
    files = calibration_files(folder, config.calibration_images) if config.quantize == 'int8' else None
    check_export_target(config.export_path, config.file_format)
    set_device(config.device_target, config.device_id)
    net, description, card = load_deploy_network(config.pretrained, config)
    print(f'=> {description}')
    size = f'{card.image_size}x{card.image_size}'
    names = (f'{len(card.class_names)} class names' if card.class_names
             else 'no class names (the checkpoint records none)')
    if config.quantize == 'int8':
        note = foreign_classes_note(files, card.class_names)
        if note:
            print(note)
        result = export_int8(net, card, config.export_path, files, model=config.pretrained)
        print(f'=> exported {result.path} (ONNX INT8: {INT8_SCHEME}; deploy form, input {result.batch}x3x{size} '
              f'float32, {names}; calibrated on {result.images} images of {folder})')
        print(f'=> top-1 agreement with the fp32 network on the calibration images: {result.agreement:.2%} '
              f'(at least {AGREEMENT_THRESHOLD:.0%} required; the fp32 export differs from the network by '
              f'{result.fp32_difference:.2g} relative)')
    else:
        path, difference, batch = export_network(net, card.image_size, config.file_format, config.export_path, card,
                                                 model=config.pretrained)
        print(f'=> exported {path} ({config.file_format}, deploy form, input {batch}x3x{size} float32, {names}; '
              f'max relative difference to the network {difference:.2g})')
    print('=> export success')


if __name__ == '__main__':
    main()
