"""What training saves: modular checkpoints (weights by module group) and the one rolling resume state."""

from redheart.train.state.checkpoints import load_checkpoint, load_group, load_groups, save_checkpoint
from redheart.train.state.resume import ResumeError, has_resume, load_resume, read_resume_info, save_resume

__all__ = [
    "ResumeError",
    "has_resume",
    "load_checkpoint",
    "load_group",
    "load_groups",
    "load_resume",
    "read_resume_info",
    "save_checkpoint",
    "save_resume",
]
