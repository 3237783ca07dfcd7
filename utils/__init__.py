"""The fine-tuning course's code: profiles, models, data, training, metrics, reports.

Notebooks start with::

    from utils import course
    run = course.start("02_full_fine_tuning")
"""

import logging

__version__ = "0.1.0"

# On CPUs with AVX512-BF16, importing bitsandbytes (which PEFT does) warns that an optional kernel
# package is missing. That kernel would come from the Hugging Face Hub; without it bitsandbytes
# uses its own CPU kernels, so the warning says nothing a learner can act on.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward")
)
