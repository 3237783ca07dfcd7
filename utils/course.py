"""The first cell of every notebook: pick the profile, fix seeds and threads, say what runs."""

from __future__ import annotations

import os
import platform
import warnings
from dataclasses import dataclass

import torch
import transformers

from utils.generation import reuse_generations_in
from utils.models import autocast_dtype_name, describe_model, resolve_device, resolve_dtype, training_precision
from utils.plumbing.files import runs_dir
from utils.plumbing.hub import require_hub_or_cache
from utils.plumbing.out_of_memory import low_memory_warning
from utils.plumbing.results import record_result
from utils.profiles import Profile, ProfileError, choose_profile, hub_repos, in_colab, with_overrides


def configure_threads() -> int:
    """Use $OMP_NUM_THREADS threads, else one per core (CPU timings are erratic otherwise)."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def library_versions() -> dict[str, str]:
    """Versions that decide results, for reports ("not installed" for an optional one that is absent)."""
    import importlib.metadata

    import datasets
    import peft

    def installed(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "datasets": datasets.__version__,
        "accelerate": installed("accelerate"),
        "trl": installed("trl"),
        "bitsandbytes": installed("bitsandbytes"),
    }


@dataclass
class Course:
    """One notebook's run: its name, the chosen profile and why it was chosen."""

    notebook: str
    profile: Profile
    reason: str

    @property
    def model_name(self) -> str:
        return describe_model(self.profile)

    def record(self, method: str, variant: str = "", **measured) -> dict:
        """Save what this notebook measured for `method` in runs/<profile>/results.json."""
        return record_result(
            self.profile.run_name, self.notebook, method, self.profile.model, variant=variant, **measured
        )


def require_colab_gpu(profile: Profile) -> None:
    """In Colab, a profile that needs a CUDA GPU on a runtime without one: stop, saying how to get one or run offline."""
    if in_colab() and profile.device == "cuda" and not torch.cuda.is_available():
        raise ProfileError(
            f"This Colab runtime has no GPU, which profile {profile.name!r} needs. Either pick one: Runtime → Change "
            "runtime type → T4 GPU, then run the notebook again from the top; or run the offline profile on this CPU: "
            'set COURSE_PROFILE = "offline" in the set-up cell and run the notebook again from the top (a small '
            "model and the bundled data; slower, but no GPU needed).")


def start(notebook: str) -> Course:
    """Choose the profile (COURSE_PROFILE, Colab, GPU or offline), seed everything, print a summary."""
    profile, reason = choose_profile()
    profile = with_overrides(profile)
    require_colab_gpu(profile)
    if profile.needs_hub:
        # Fail in seconds, not at the first download, naming every repository neither the Hub nor the cache has.
        require_hub_or_cache(f"Profile {profile.name!r}", hub_repos(profile, [notebook]))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # PEFT still reads a transformers attribute renamed in 5.x; the warning says nothing a learner can act on.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    threads = configure_threads()
    transformers.set_seed(profile.seed)
    device = resolve_device(profile)
    course = Course(notebook=notebook, profile=profile, reason=reason)
    print(f"Profile : {profile.name} ({reason})")
    print(f"          {profile.description}")
    if profile.cost:
        print(f"Needs   : {profile.cost}")
    print(f"Model   : {course.model_name} [{profile.family}]")
    print(f"Data    : {profile.data}" + (f"  (results in runs/{profile.run_name}/)" if profile.data_label else ""))
    print(f"Device  : {device.type}, {str(resolve_dtype(profile)).removeprefix('torch.')} weights, {threads} CPU threads")
    print(f"Training: {training_precision(profile)[1]}")
    generation_dtype = autocast_dtype_name(profile)
    print("Generate: " + (f"and score (perplexity, benchmark) from a {generation_dtype} copy of the model, the dtype "
                          "training computes in" if generation_dtype else "and score in the model's own dtype"))
    memory = low_memory_warning(notebook, profile.name)
    if memory:
        print(memory)
    generations = runs_dir(profile.run_name) / "generations"
    reuse_generations_in(generations)
    print(f"Reuse   : trainings and generations already done with the same weights and settings, from "
          f"runs/{profile.run_name}/ (delete checkpoints/ or generations/ there to compute them again)")
    return course
