"""`make demo`: train, evaluate and look at a toy detector, all on CPU.

1. Makes the synthetic toy COCO at ``data/toy_coco`` if it is not there
   (``tools/misc/make_toy_dataset.py``: shapes standing for 5 COCO classes).
2. Trains ``configs/toy/retinanet_poolformer_s12_toy_coco.py`` from scratch
   through ``tools/train.py`` (the real launcher, in a subprocess), with a
   COCO evaluation after every epoch.
3. Tests the final checkpoint with ``tools/test.py`` (CocoMetric) and prints
   the box mAP and the per-epoch learning curve.
4. Draws the detections on a validation image with ``tools/infer.py`` into
   ``work_dirs/demo/demo_detections.jpg``.
"""
import argparse
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/toy/retinanet_poolformer_s12_toy_coco.py'
DATA_ROOT = 'data/toy_coco'
WORK_DIR = 'work_dirs/demo'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--num-train', type=int, default=128,
                        help='toy training images (if the set is made now)')
    parser.add_argument('--num-val', type=int, default=16,
                        help='toy validation images (if the set is made now)')
    parser.add_argument('--epochs', type=int, default=None,
                        help='override the toy config\'s max_epochs')
    parser.add_argument('--work-dir', default=WORK_DIR)
    return parser.parse_args(argv)


def tool(name, *args):
    """Run tools/<name> with this interpreter, echoing its output."""
    cmd = [sys.executable, osp.join('tools', name), *map(str, args)]
    print('$', ' '.join(cmd), flush=True)
    lines = []
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            lines.append(line)
            if re.search(r'Epoch\(|coco/bbox_mAP:|^error|Error:|wrote ',
                         line):
                print('   ', line.rstrip()[:200], flush=True)
    if proc.returncode != 0:
        sys.stdout.write(''.join(lines[-40:]))
        sys.exit(f'{name} failed with exit code {proc.returncode}')
    return ''.join(lines)


def learning_curve(work_dir):
    """(epoch, bbox_mAP, bbox_mAP_50) from the newest run's scalars.json."""
    runs = sorted(d for d in os.listdir(work_dir)
                  if osp.isfile(osp.join(work_dir, d, 'vis_data',
                                         'scalars.json')))
    if not runs:
        return []
    curve, epoch = [], 0
    with open(osp.join(work_dir, runs[-1], 'vis_data', 'scalars.json')) as f:
        for line in f:
            record = json.loads(line)
            if 'epoch' in record:
                epoch = record['epoch']
            if 'coco/bbox_mAP' in record:
                curve.append((record.get('step', epoch),
                              record['coco/bbox_mAP'],
                              record['coco/bbox_mAP_50']))
    return curve


def main(argv=None):
    args = parse_args(argv)
    os.chdir(ROOT)
    start = time.time()
    if not osp.isfile(osp.join(DATA_ROOT, 'annotations',
                               'instances_val2017.json')):
        sys.path.insert(0, osp.join(ROOT, 'tools', 'misc'))
        from make_toy_dataset import make_coco
        make_coco(DATA_ROOT, num_train=args.num_train, num_val=args.num_val,
                  img_size=256, seed=0, verbose=True)
    else:
        print(f'Using the toy COCO already in {DATA_ROOT}')

    train_args = [CONFIG, '--work-dir', args.work_dir]
    if args.epochs is not None:
        train_args += ['--cfg-options', f'train_cfg.max_epochs={args.epochs}',
                       f'param_scheduler.1.T_max={args.epochs}',
                       f'param_scheduler.1.end={args.epochs}',
                       f'default_hooks.checkpoint.interval={args.epochs}']
    tool('train.py', *train_args)
    with open(osp.join(args.work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    curve = learning_curve(args.work_dir)

    out = tool('test.py', CONFIG, checkpoint, '--work-dir',
               osp.join(args.work_dir, 'test'))
    found = re.search(r'coco/bbox_mAP: (-?[\d.]+)', out)
    box_map = float(found.group(1)) if found else float('nan')

    val_dir = osp.join(DATA_ROOT, 'val2017')
    image = osp.join(val_dir, sorted(os.listdir(val_dir))[0])
    picture = osp.join(args.work_dir, 'demo_detections.jpg')
    tool('infer.py', image, CONFIG, checkpoint, '--out', picture)

    print('\nLearning curve (validation after each epoch):')
    print('  epoch  bbox_mAP  bbox_mAP_50')
    for epoch, m, m50 in curve:
        print(f'  {epoch:5d}  {m:8.3f}  {m50:11.3f}')
    print(f'\nBox mAP of {checkpoint} on the toy val set: {box_map:.3f}')
    print(f'Detections drawn on {image}: {picture}')
    print(f'Total time: {(time.time() - start) / 60:.1f} min')


if __name__ == '__main__':
    main()
