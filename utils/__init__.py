"""Helpers for the fine-tuning course: profiles, models, data, training, metrics, reports.

Notebooks start with::

    from utils import course
    run = course.start("02_full_fine_tuning")
"""

__version__ = "0.1.0"
