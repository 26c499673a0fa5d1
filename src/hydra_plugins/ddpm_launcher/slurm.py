"""The launcher of ``hydra/launcher=slurm``: hydra-submitit-launcher's, checking every job before any is
submitted (``ddpm.runs.slurm_launcher``). Here because Hydra loads launchers only from ``hydra_plugins``."""

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

from ddpm.runs.slurm_launcher import check_jobs


class SlurmLauncher(SubmititSlurmLauncher):
    """Submits as hydra-submitit-launcher does, after ``check_jobs``: a bad job is one line, nothing submitted."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        check_jobs(self, job_overrides, initial_job_idx)
        return super().launch(job_overrides, initial_job_idx)
