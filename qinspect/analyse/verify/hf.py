"""Hugging Face checkpoints (safetensors, LLM Linear layers): not run by verify yet.

Issue 15 plugs a runner in here for weight-only / W8A8 / FP8 Linear layers; until then
verify says so plainly (exit 2) instead of handing the layers to the state_dict runner,
whose eager-mode kernels they do not fit.
"""

from __future__ import annotations

from qinspect.analyse.verify.types import Options, Progress, VerifyReport
from qinspect.errors import VerifyError
from qinspect.model import Checkpoint

FORMAT_PREFIX = "Hugging Face"


class HfRunner:
    """Claims Hugging Face checkpoints and refuses them with the reason."""

    name = "hf"
    needs: dict[str, str] = {}
    refuses: dict[str, str] = {}

    def accepts(self, ckpt: Checkpoint, options: Options) -> bool:
        return ckpt.format.startswith(FORMAT_PREFIX)

    def run(self, ckpt: Checkpoint, options: Options, progress: Progress | None
            ) -> VerifyReport:
        raise VerifyError(f"{ckpt.path}: verify does not run Hugging Face checkpoints yet "
                          f"({ckpt.format}); qinspect show, diff and check read them")
