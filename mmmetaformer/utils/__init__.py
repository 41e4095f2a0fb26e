from .env_check import MMCVOpsMissingError, check_mmcv_ops, stack_versions

__all__ = ['MMCVOpsMissingError', 'check_mmcv_ops', 'stack_versions']
