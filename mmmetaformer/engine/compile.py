"""``torch.compile`` through mmengine's ``compile`` config key.

mmengine 0.10's Runner compiles ``model.train_step``, and with it the
optimizer wrapper's ``update_params``: dynamo then traces into
``torch.optim``'s step on mmengine's wrapper and, on the current torch,
stops every model at the first iteration (``InternalTorchDynamoError:
'UserDefinedDictVariable' object has no attribute 'items'``). Running
that one call eagerly (``torch.compiler.disable``: a graph break) keeps
forward and backward compiled and the step as PyTorch runs it anyway.
``tools/train.py`` adds the hook whenever a config sets ``compile``; with
mmdet's or mmseg's own tools add it to ``custom_hooks`` yourself.
"""

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class EagerOptimizerStepHook(Hook):
    """Under ``compile``, the optimizer wrapper's ``update_params`` (the
    backward, clipping and step mmengine calls from ``train_step``) runs
    eagerly; without ``compile`` it does nothing."""

    priority = 'VERY_HIGH'

    def before_train(self, runner):
        if not runner.cfg.get('compile'):
            return
        wrapper = runner.optim_wrapper
        wrapper.update_params = torch.compiler.disable(wrapper.update_params)
